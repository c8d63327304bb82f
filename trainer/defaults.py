"""What the command line needs to know about the data without importing torch: the regimes (training
images per regime) and where the MNIST cache lives."""

from __future__ import annotations

from pathlib import Path

REGIMES: dict[str, int] = {"full": 60_000, "10pct": 6_000, "1pct": 600, "100": 100, "10": 10}


def default_data_dir() -> Path:
    """``~/.cache/reflectnet/mnist``: the converted MNIST files (trainer.data)."""
    return Path.home() / ".cache" / "reflectnet" / "mnist"

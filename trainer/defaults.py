"""What the command line needs to know about the data without importing torch: the regimes (training
images per regime) and where the MNIST cache lives."""

from __future__ import annotations

from pathlib import Path

# Trainer exit codes, read by the orchestrator: 4 means no data source worked, where --resume cannot help.
EXIT_OK, EXIT_FAILED, EXIT_ORPHANED, EXIT_DATA_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 3, 4, 130

REGIMES: dict[str, int] = {"full": 60_000, "10pct": 6_000, "1pct": 600, "100": 100, "10": 10}


def default_data_dir() -> Path:
    """``~/.cache/reflectnet/mnist``: the converted MNIST files (trainer.data)."""
    return Path.home() / ".cache" / "reflectnet" / "mnist"

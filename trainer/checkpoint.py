"""Per-epoch checkpoints: everything a killed or interrupted trainer needs to continue exactly.

One file per run, ``<checkpoint_dir>/<run_id>.safetensors``, rewritten atomically (write, fsync,
rename) after every epoch. Tensors — model weights, Adam moments and steps, the pending weight
deltas, the RNG states of dropout masks and of batch order — are stored as safetensors; everything
else (epoch, hyperparameters, history, the last command and reflection, the records the recorder has
not acknowledged yet) is JSON in the file's metadata. Loading runs no pickle: safetensors and JSON
only, so a checkpoint from elsewhere cannot execute code.

After the last epoch the file holds the final model; ``load_checkpoint`` works on it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = "reflectnet-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or from another run."""


def checkpoint_path(checkpoint_dir: Path, run_id: str) -> Path:
    return Path(checkpoint_dir) / f"{run_id}.safetensors"


@dataclass
class TrainingState:
    """What the trainer carries from one epoch to the next, beside the tensors."""

    run_id: str
    epoch: int  # the last completed epoch
    lr: float
    dropout: float
    alpha: float
    history: list[dict[str, Any]] = field(default_factory=list)
    previous_command: dict[str, Any] | None = None
    previous_reflection: dict[str, Any] | None = None
    # [topic, json] of records sent but not yet acknowledged when this was written
    pending_records: list[list[str]] = field(default_factory=list)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous()


def save_checkpoint(
    path: Path,
    state: TrainingState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    deltas: dict[str, torch.Tensor],
    order_rng: torch.Generator,
) -> None:
    tensors = {f"model.{name}": _cpu(value) for name, value in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in optim["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = _cpu(value)
            else:
                scalars.setdefault(str(index), {})[key] = value
    for name, delta in deltas.items():
        tensors[f"delta.{name}"] = _cpu(delta)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.order"] = order_rng.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = rng
    metadata = {
        "format": FORMAT,
        "state": json.dumps(state.__dict__),
        "param_groups": json.dumps(optim["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_state(path: Path) -> TrainingState:
    """The JSON part of a checkpoint, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # missing, truncated, or not safetensors
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ReflectNet checkpoint (format {metadata.get('format')!r})")
    try:
        return TrainingState(**json.loads(metadata["state"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has a damaged state: {exc}") from None


def load_checkpoint(
    path: Path,
    run_id: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    order_rng: torch.Generator,
    device: torch.device,
) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Restore model, optimizer and RNGs from ``path`` in place; returns the state and pending deltas."""
    state = read_state(path)
    if state.run_id != run_id:
        raise CheckpointError(f"checkpoint {path} belongs to run {state.run_id!r}, not {run_id!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optim_state: dict[int, dict[str, Any]] = {
            int(index): dict(values) for index, values in json.loads(metadata["optim_scalars"]).items()
        }
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, slot = key.split(".", 2)
                param = params[int(index)]
                if value.shape == param.shape:  # moments keep the parameter's memory format (channels_last)
                    value = torch.empty_like(param).copy_(value)
                optim_state.setdefault(int(index), {})[slot] = value.to(param.device)
        optimizer.load_state_dict({"state": optim_state, "param_groups": json.loads(metadata["param_groups"])})
        deltas = {k[len("delta.") :]: v.to(device) for k, v in tensors.items() if k.startswith("delta.")}
        torch.set_rng_state(tensors["rng.torch"])
        order_rng.set_state(tensors["rng.order"])
        cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        cuda_states = [tensors[k] for k in cuda_keys]
        if cuda_states and device.type == "cuda":
            torch.cuda.set_rng_state_all(cuda_states)
    except (KeyError, IndexError, ValueError, RuntimeError, json.JSONDecodeError) as exc:  # damaged, or another model
        raise CheckpointError(f"checkpoint {path} does not fit this model: {type(exc).__name__}: {exc}") from None
    return state, deltas

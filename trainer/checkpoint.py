"""Per-epoch checkpoints: everything a killed or interrupted trainer needs to continue exactly.

One file per run, ``<checkpoint_dir>/<run_id>.safetensors``, rewritten atomically (write, fsync,
rename) after every epoch. Tensors — the task's (``Task.checkpoint_state``: weights, optimizer moments,
its RNG states), the pending weight deltas, torch's global RNG — are stored as safetensors; everything
else (epoch, knob values, history, the last command and reflection, the records the recorder has not
acknowledged yet, the task's JSON) is JSON in the file's metadata. Loading runs no pickle: safetensors and JSON
only, so a checkpoint from elsewhere cannot execute code.

After the last epoch the file holds the final model; ``load_checkpoint`` works on it too.

Beside it, ``<run_id>.best.safetensors`` (:func:`best_path`) holds the checkpoint of the best epoch so far
(``bus.messages.best_epoch``), written by the same writer when an epoch becomes the best: what a rollback restores
(:func:`restore_best`). Its state says which epoch it holds, so a resumed run knows it without reading tensors.
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

from trainer.contract import check_hyperparameters

FORMAT = "reflectnet-checkpoint-2"  # 2: the task's own tensors and JSON (any task), knobs by name


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, from another run, or from an older ReflectNet."""


@dataclass
class TrainingState:
    """What the trainer carries from one epoch to the next, beside the task's own state."""

    run_id: str
    epoch: int  # the last completed epoch
    hyperparameters: dict[str, float]  # the knob values the next epoch uses
    alpha: float
    last_steps: int = 0  # optimizer steps of the last epoch (spreads a delta when the task cannot tell ahead)
    history: list[dict[str, Any]] = field(default_factory=list)
    previous_command: dict[str, Any] | None = None
    previous_reflection: dict[str, Any] | None = None
    instruction: dict[str, Any] | None = None  # the user's instruction active now (bus.messages.Instruction)
    instruction_index: int | None = None  # its place in TrainerConfig.instructions
    instruction_shaped: bool = False  # whether a decision was made with it yet
    # [topic, json] of records sent but not yet acknowledged when this was written
    pending_records: list[list[str]] = field(default_factory=list)


def save_checkpoint(path: Path, state: TrainingState, task, deltas: dict[str, torch.Tensor]) -> None:
    """Write ``state``, the task's :meth:`~tasks.base.Task.checkpoint_state`, the pending epoch ``deltas`` and
    torch's global RNG (and CUDA's) to ``path`` atomically: write, fsync, rename."""
    task_tensors, task_meta = task.checkpoint_state()
    tensors = {f"task.{key}": value for key, value in task_tensors.items()}
    for name, delta in deltas.items():
        tensors[f"delta.{name}"] = delta.detach().to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = rng
    metadata = {"format": FORMAT, "state": json.dumps(state.__dict__), "task": json.dumps(task_meta)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:  # missing, truncated, or not safetensors
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if metadata.get("format") == "reflectnet-checkpoint-1":
        raise CheckpointError(f"{path} was written by an older ReflectNet (format 1) and cannot be resumed by this one")
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ReflectNet checkpoint (format {metadata.get('format')!r})")
    return metadata


def read_state(path: Path) -> TrainingState:
    """The trainer's JSON part of a checkpoint, without loading its tensors."""
    metadata = _metadata(path)
    try:
        return TrainingState(**json.loads(metadata["state"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has a damaged state: {exc}") from None


def best_path(checkpoint_file: Path) -> Path:
    """Where the best epoch's checkpoint of the run checkpointed at ``checkpoint_file`` lives:
    ``<run_id>.best.safetensors`` beside ``<run_id>.safetensors``."""
    return checkpoint_file.with_name(checkpoint_file.name.removesuffix(".safetensors") + ".best.safetensors")


def _read(path: Path, run_id: str) -> tuple[TrainingState, dict[str, str], dict[str, torch.Tensor]]:
    """State, metadata and tensors of the checkpoint at ``path`` of run ``run_id``; CheckpointError otherwise."""
    state = read_state(path)
    if state.run_id != run_id:
        raise CheckpointError(f"checkpoint {path} belongs to run {state.run_id!r}, not {run_id!r}")
    try:
        return state, _metadata(path), load_file(str(path))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None


def _restore_task(task, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """The task's own state (weights, optimizer, its RNGs, knob values) from a checkpoint's tensors and JSON."""
    task.restore_state(
        {k[len("task.") :]: v for k, v in tensors.items() if k.startswith("task.")}, json.loads(metadata["task"])
    )
    check_hyperparameters(task.spec(), task.hyperparameter_values())


def restore_best(path: Path, run_id: str, task) -> TrainingState:
    """Restore the task's own state from the best-epoch checkpoint at ``path`` (a rollback): the weights, the
    optimizer's moments and the task's RNGs as they were after that epoch; torch's global RNG and the pending
    deltas are left as they are (the command that asked for the rollback sets the blend). Returns the file's
    state (``state.epoch``: the epoch restored). CheckpointError when it is missing or does not fit."""
    state, metadata, tensors = _read(path, run_id)
    try:
        _restore_task(task, metadata, tensors)
    except (KeyError, IndexError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this task: {type(exc).__name__}: {exc}") from None
    return state


def load_checkpoint(path: Path, run_id: str, task, device: torch.device) -> tuple[TrainingState, dict[str, torch.Tensor]]:
    """Restore the task (set up already, with the run's regime and seed) and torch's RNGs from ``path`` in
    place; returns the state and the pending deltas (on ``device``). CheckpointError when anything does not fit."""
    state, metadata, tensors = _read(path, run_id)
    try:
        _restore_task(task, metadata, tensors)
        # Knob values from a file are held to the declarations as the agent's are (ValueError otherwise).
        check_hyperparameters(task.spec(), state.hyperparameters)
        deltas = {k[len("delta.") :]: v.to(device) for k, v in tensors.items() if k.startswith("delta.")}
        torch.set_rng_state(tensors["rng.torch"])
        cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        if cuda_keys and device.type == "cuda":
            torch.cuda.set_rng_state_all([tensors[k] for k in cuda_keys])
    except (KeyError, IndexError, ValueError, RuntimeError, json.JSONDecodeError) as exc:  # damaged, or another task
        raise CheckpointError(f"checkpoint {path} does not fit this task: {type(exc).__name__}: {exc}") from None
    return state, deltas

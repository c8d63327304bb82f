"""Weight modulations from a command, as exact-shape per-epoch delta tensors.

Raw deltas arrive as nested lists and are checked again here (names, shapes, finiteness): the
trainer never trusts the bus. Compact operations are expanded from the current weights, which only
the trainer has; noise is drawn from the operation's seed, so a replay draws the same noise.
"""

from __future__ import annotations

import torch

from bus.messages import MAX_OP_FRACTION, UpdateCommand, WeightOp


def expand_op(op: WeightOp, weight: torch.Tensor) -> torch.Tensor:
    if op.delta_norm_fraction() > MAX_OP_FRACTION + 1e-9:
        raise ValueError(
            f"{op.op} on {op.layer} moves it by {op.delta_norm_fraction():.3f} of its norm, cap {MAX_OP_FRACTION}"
        )
    w = weight.detach()
    if op.op == "scale":
        return (op.value - 1.0) * w
    if op.op == "shrink":
        return -op.value * w
    generator = torch.Generator().manual_seed(op.seed)
    noise = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
    return noise * (op.value * w.norm() / noise.norm().clamp(min=1e-12))


def deltas_from_command(command: UpdateCommand, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per-parameter epoch deltas for ``command``; raises ValueError on any name or shape the model lacks."""
    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    for name, values in (command.weight_modulation or {}).items():
        if name not in params:
            raise ValueError(f"weight_modulation names unknown parameter {name!r}")
        delta = torch.tensor(values, dtype=params[name].dtype, device=params[name].device)
        if delta.shape != params[name].shape:
            raise ValueError(
                f"delta for {name} has shape {list(delta.shape)}, parameter has {list(params[name].shape)}"
            )
        if not torch.isfinite(delta).all():
            raise ValueError(f"delta for {name} contains NaN or inf")
        deltas[name] = delta
    for op in command.weight_ops or []:
        if op.layer not in params:
            raise ValueError(f"weight op names unknown parameter {op.layer!r}")
        delta = expand_op(op, params[op.layer])
        deltas[op.layer] = deltas[op.layer] + delta if op.layer in deltas else delta
    return deltas

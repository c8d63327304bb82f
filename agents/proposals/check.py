"""Checking a :class:`~agents.proposals.proposal.Proposal` against the task: the one place every command is
bounded, whoever proposed it (a rule, a replay, the expert form, a 135M model, a user's controller).

``check_proposal(proposal, metrics, command_space)`` checks a field per knob of the task (as its ``TaskSpec``
declares them) and ``alpha``: types, NaN/inf, the hard bounds (``Hyperparameter.check``: a value outside them —
a negative learning rate, a dropout of 5 — is not a setting at all and is an error for the repairer), the trust
region (a valid value beyond it is clamped, and the clamp recorded), layer names, tensor shapes, payload size,
delta norms, operation values (capped) and seeds, and a rollback (to the best epoch so far: with no earlier best
epoch to return to it is cleared, and with it the weight changes proposed for the weights it replaces, both
recorded as clamps). In the grid command space every number is snapped to the
nearest grid value, recorded as a clamp too. The fields that passed are kept in ``partial`` (the deterministic
repair keeps them). :func:`validate_answer` is the whole path for an answer text: parse, then check.
"""

from __future__ import annotations

import math
import numbers
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agents.proposals.parse import ALPHA, MAX_IGNORED_FIELDS, OP_VALUE_KEYS, parse_answer, required_fields
from agents.proposals.proposal import NOT_GIVEN, Proposal, WeightChange
from agents.trends import current_values
from bus.messages import ALPHA_RANGE, MAX_OP_FRACTION, EpochMetrics, UpdateCommand, WeightOp

MAX_MODULATION_ELEMENTS = 500_000  # the largest MNIST layer (fc.0.weight) has 401,408
MAX_DELTA_NORM_RATIO = MAX_OP_FRACTION  # one epoch's delta may move a layer by at most 5% of its weight norm
MAX_OPS = 16
MAX_RATIONALE_CHARS = 2000
MAX_SEED = 2**63 - 1  # a weight operation's noise seed: any non-negative 64-bit signed integer
OP_RANGES = {
    "scale": (1.0 - MAX_OP_FRACTION, 1.0 + MAX_OP_FRACTION),
    "shrink": (0.0, MAX_OP_FRACTION),
    "noise": (0.0, MAX_OP_FRACTION),
}
# The grid command space: a few choices per field around the current values (each knob's own grid,
# ``Hyperparameter.grid``; alpha in steps of 0.2).
ALPHA_CHOICES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
OP_CHOICES = {"factor": [0.98, 1.02], "amount": [0.01, 0.02], "scale": [0.01, 0.02]}
GRID_MAX_OPS = 1
GRID_PRINT_TOLERANCE = 1e-3


def allowed_ranges(m: EpochMetrics) -> dict[str, tuple[float, float]]:
    """The range each field may take after this epoch: each knob's hard bounds intersected with its trust
    region around the current value (``Hyperparameter.allowed``), and alpha's hard bounds."""
    values = current_values(m)
    return {**{k.name: k.allowed(values[k.name]) for k in m.task.hyperparameters}, ALPHA: ALPHA_RANGE}


def grid_choices(m: EpochMetrics) -> dict[str, list[float]]:
    """The values each field may take in the grid command space after this epoch: each knob's
    ``Hyperparameter.grid`` around its current value (MNIST: learning rate halved / kept / doubled,
    dropout -0.1 / +0 / +0.1), alpha in steps of 0.2 (and its current value)."""
    values = current_values(m)
    choices = {k.name: k.grid(values[k.name]) for k in m.task.hyperparameters}
    return {**choices, ALPHA: sorted({*ALPHA_CHOICES, m.alpha})}


def _snap(name: str, value: float, choices: list[float], clamped: dict, by_ratio: bool = False) -> float:
    """``value`` moved to the nearest of ``choices`` (by ratio for a log-scale knob), recorded as a
    clamp with ``grid: true`` when it moves. A value within 0.1% of a choice is that choice, printed
    with fewer digits (the prompt shows 7.07e-04 for 0.000707106...), and is taken without a record."""
    for choice in choices:
        if math.isclose(value, choice, rel_tol=GRID_PRINT_TOLERANCE, abs_tol=1e-12):
            return choice
    if by_ratio and value > 0:  # a log-scale knob's range is positive: the value was clamped into it
        nearest = min(choices, key=lambda c: abs(math.log(c / value)))
    else:
        nearest = min(choices, key=lambda c: abs(c - value))
    original = clamped.get(name, {}).get("from", value)  # a range clamp before the snap keeps its "from"
    clamped[name] = {"from": original, "to": nearest, "grid": True}
    return nearest


def _check_raw_delta(name: str, values: Any, m: EpochMetrics, clamped: dict, errors: list[str]) -> list | None:
    expected = tuple(m.param_shapes[name])
    try:
        delta = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # ragged, not numbers, or an integer beyond float
        errors.append(f"delta for {name!r} is not a rectangular array of numbers")
        return None
    if delta.shape != expected:
        errors.append(f"delta for {name!r} has shape {list(delta.shape)}, expected {list(expected)}")
        return None
    if not np.isfinite(delta).all():
        errors.append(f"delta for {name!r} contains NaN or inf")
        return None
    cap = MAX_DELTA_NORM_RATIO * m.weight_norms.get(name, 0.0)
    norm = float(np.linalg.norm(delta))
    if norm > cap:
        delta = delta * (cap / norm)
        clamped[f"weight_modulation.{name}.norm"] = {"from": norm, "to": cap}
    return delta.tolist()


def _hard_bounds(m: EpochMetrics) -> dict[str, tuple[float, float]]:
    return {**{k.name: (k.low, k.high) for k in m.task.hyperparameters}, ALPHA: ALPHA_RANGE}


def _check_number(name: str, value: Any, m: EpochMetrics, clamped: dict, errors: list[str]) -> float | None:
    """``value`` as a float inside :func:`allowed_ranges` (clamped there and recorded), or None with an error: not
    a number, not finite, or outside the hard bounds. Any real number counts (numpy's scalars too), not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        errors.append(f"{name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer with hundreds of digits
        errors.append(f"{name} is too large: {str(value)[:20]}...")
        return None
    if not math.isfinite(value):
        errors.append(f"{name} must be finite, got {value}")
        return None
    low, high = _hard_bounds(m)[name]
    if not low <= value <= high:
        errors.append(f"{name}={value:g} is not a valid setting: it must lie in [{low:g}, {high:g}]")
        return None
    low, high = allowed_ranges(m)[name]
    if not low <= value <= high:  # a valid value beyond the trust region: moved to its edge
        clamped[name] = {"from": value, "to": min(max(value, low), high)}
        value = clamped[name]["to"]
    return value


def _check_op(change: WeightChange, m: EpochMetrics, clamped: dict, errors: list[str], grid: bool) -> WeightOp | None:
    layer, op = change.layer, change.op
    if op not in OP_VALUE_KEYS:
        errors.append(f"operation on {layer!r} must have op one of {sorted(OP_VALUE_KEYS)}, got {str(op)[:40]!r}")
        return None
    key, value = OP_VALUE_KEYS[op], change.value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        errors.append(f"{op} on {layer!r} needs a number {key!r}, got {str(value)[:40]!r}")
        return None
    if isinstance(value, int) and abs(value) > 1e6:  # also keeps huge integers away from float()
        value = 1e6 if value > 0 else -1e6
    if not math.isfinite(value):
        errors.append(f"{op} on {layer!r} has a non-finite {key}: {value}")
        return None
    low, high = OP_RANGES[op]
    if not low <= value <= high:  # operations are capped, not refused: a cap is a size, not a setting
        clamped[f"weight_ops.{layer}.{key}"] = {"from": float(value), "to": min(max(value, low), high)}
        value = min(max(value, low), high)
    if grid:
        value = _snap(f"weight_ops.{layer}.{key}", float(value), OP_CHOICES[key], clamped)
    return WeightOp(layer=layer, op=op, value=float(value), seed=_seed(change, m, clamped))


def _seed(change: WeightChange, m: EpochMetrics, clamped: dict) -> int:
    """The operation's noise seed: the integer ``seed`` proposed (a replayed command keeps its recorded noise),
    else one derived from run, epoch and layer. A ``seed`` that is not an integer in [0, 2**63) is replaced by the
    derived one, and that is recorded as a clamp."""
    derived = zlib.crc32(f"{m.run_id}:{m.epoch}:{change.layer}".encode())
    seed = change.seed
    if seed is NOT_GIVEN:
        return derived
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        return seed
    clamped[f"weight_ops.{change.layer}.seed"] = {"from": str(seed)[:40], "to": derived}
    return derived


def _check_weight_changes(
    changes: tuple[WeightChange, ...], m: EpochMetrics, clamped: dict, errors: list[str], ambiguous: list[str],
    grid: bool = False,
) -> tuple[dict[str, list], list[WeightOp]]:  # fmt: skip
    """Raw deltas and compact operations that passed; every failure is an error naming the layer. A layer named
    twice is ambiguous: its first entry is taken and the rest listed in ``ambiguous``. In the grid command space
    only operations are taken, at most ``GRID_MAX_OPS``."""
    deltas: dict[str, list] = {}
    ops: list[WeightOp] = []
    if len(changes) > MAX_OPS:
        errors.append(f"weight_modulation has {len(changes)} entries, at most {MAX_OPS} allowed")
        return deltas, ops
    if grid and changes:
        raw_layers = [c.layer for c in changes if c.is_delta]
        if raw_layers:
            errors.append(f"the grid command space takes weight operations, not raw deltas (for {raw_layers[:4]})")
            return deltas, ops
        if len(changes) > GRID_MAX_OPS:
            clamped["weight_ops.count"] = {"from": len(changes), "to": GRID_MAX_OPS, "grid": True}
            changes = changes[:GRID_MAX_OPS]
    seen: set[str] = set()
    elements = 0
    for change in changes:
        layer = change.layer
        if layer not in m.param_shapes:
            errors.append(f"weight_modulation names unknown layer {layer!r}; known layers: {', '.join(m.param_shapes)}")
            continue
        if layer in seen:
            ambiguous.append(f"weight_modulation names {layer!r} more than once; the first entry is used")
            continue
        seen.add(layer)
        if not change.is_delta:
            if (op := _check_op(change, m, clamped, errors, grid)) is not None:
                ops.append(op)
            continue
        elements += int(np.prod(m.param_shapes[layer]))
        if elements > MAX_MODULATION_ELEMENTS:
            errors.append(f"weight_modulation exceeds {MAX_MODULATION_ELEMENTS} elements at {layer!r}")
            continue
        if (delta := _check_raw_delta(layer, change.value, m, clamped, errors)) is not None:
            deltas[layer] = delta
    return deltas, ops


@dataclass
class CheckedAnswer:
    """The checks' verdict on one proposal: the command (None when ``errors``), the fields that passed, every
    clamp and grid snap, and notes on how an answer text was read (see ``agents.proposals.parse``)."""

    command: UpdateCommand | None
    partial: dict[str, Any] = field(default_factory=dict)
    clamped: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def check_proposal(proposal: Proposal, m: EpochMetrics, command_space: str = "free") -> CheckedAnswer:
    """Check ``proposal`` against the state after epoch ``m``: a value per knob of ``m.task`` and ``alpha``,
    optional weight changes, ``rationale``. ``command_space`` is ``free`` (any valid number, clamped into
    :func:`allowed_ranges`) or ``grid`` (numbers snapped to :func:`grid_choices`). Never raises."""
    checked = CheckedAnswer(None)
    grid = command_space == "grid"
    _check_required(proposal, m, grid, checked)
    _check_weights(proposal, m, grid, checked)
    _check_rollback(proposal, m, checked)
    _check_rest(proposal, m.task.knob_names(), checked)
    if not checked.errors:
        checked.command = command_from(checked.partial, m.task.knob_names())
    return checked


def _check_required(proposal: Proposal, m: EpochMetrics, grid: bool, checked: CheckedAnswer) -> None:
    """Each required number into ``checked.partial``: clamped into its range and, in the grid command space,
    snapped to its choices (by ratio for a log-scale knob); a missing or bad one is an error."""
    choices = grid_choices(m) if grid else {}
    log_scale = {k.name for k in m.task.hyperparameters if k.scale == "log"}
    given = {**proposal.hyperparameters, **({ALPHA: proposal.alpha} if proposal.alpha is not NOT_GIVEN else {})}
    for name in required_fields(m):
        if name not in given:
            checked.errors.append(f"missing required field {name!r}")
            continue
        value = _check_number(name, given[name], m, checked.clamped, checked.errors)
        if value is not None and grid:
            value = _snap(name, value, choices[name], checked.clamped, by_ratio=name in log_scale)
        if value is not None:
            checked.partial[name] = value


def _check_weights(proposal: Proposal, m: EpochMetrics, grid: bool, checked: CheckedAnswer) -> None:
    """The proposal's weight changes (:func:`_check_weight_changes`): raw deltas that passed go to
    ``partial["weight_modulation"]``, operations to ``partial["weight_ops"]``, a layer named twice to
    ``notes["ambiguous"]``."""
    ambiguous: list[str] = []
    deltas, ops = _check_weight_changes(proposal.weight_changes, m, checked.clamped, checked.errors, ambiguous, grid)
    if ambiguous:
        checked.notes["ambiguous"] = ambiguous
    if deltas:
        checked.partial["weight_modulation"] = deltas
    if ops:
        checked.partial["weight_ops"] = ops


def _check_rollback(proposal: Proposal, m: EpochMetrics, checked: CheckedAnswer) -> None:
    """A rollback asked for (``proposal.rollback`` true) into ``partial["rollback"]`` when there is a best epoch
    before this one (``EpochMetrics.best``); else cleared with a clamp saying why (not an error: nothing is wrong
    with the rest of the command). A rollback replaces the weights, so weight changes proposed with it (computed
    for the weights it replaces) are dropped, recorded too. Anything but a bool is an error."""
    asked = proposal.rollback
    if asked is False:
        return
    if not isinstance(asked, bool):
        checked.errors.append(f"rollback must be true or false, got {type(asked).__name__} {str(asked)[:40]!r}")
        return
    best = m.best
    if best is None or best.epoch == m.epoch:
        why = "no epoch has a finite objective" if best is None else f"epoch {m.epoch} is the best so far"
        checked.clamped["rollback"] = {"from": True, "to": False, "reason": f"nothing to return to: {why}"}
        return
    checked.partial["rollback"] = True
    dropped = [*checked.partial.pop("weight_modulation", {}), *(op.layer for op in checked.partial.pop("weight_ops", []))]
    if dropped:
        checked.clamped["weight_modulation.rollback"] = {"from": dropped, "to": [], "reason": "the rollback replaces them"}
    objective = m.task.objective
    checked.notes["rollback"] = f"returns to epoch {best.epoch} ({objective} {best.metrics[objective]:.4g})"


def _check_rest(proposal: Proposal, knobs: list[str], checked: CheckedAnswer) -> None:
    """The rationale (a string, cut to :data:`MAX_RATIONALE_CHARS`), fields no command has (recorded as
    ``clamped["ignored_fields"]``) and a note naming the fields snapped to the grid."""
    rationale = proposal.rationale
    if not isinstance(rationale, str):
        checked.errors.append(f"rationale must be a string, got {type(rationale).__name__}")
        rationale = ""
    checked.partial["rationale"] = rationale[:MAX_RATIONALE_CHARS]
    unknown = sorted(set(proposal.hyperparameters) - set(knobs))  # a typed proposal's knobs the task does not have
    ignored = sorted({*proposal.ignored_fields, *unknown})[:MAX_IGNORED_FIELDS]
    if ignored:
        checked.clamped["ignored_fields"] = ignored
    snapped = sorted(name for name, entry in checked.clamped.items() if isinstance(entry, dict) and entry.get("grid"))
    if snapped:
        checked.notes["off_grid"] = (
            f"{snapped} were off the grid and snapped to the nearest choice: the server may not have applied the schema"
        )


def command_from(partial: dict[str, Any], knobs: list[str]) -> UpdateCommand:
    """The command from checked fields in the flat answer form: the value of each of ``knobs`` by name,
    ``alpha``, optional ``weight_modulation`` (raw deltas) and ``weight_ops``, ``rationale``, ``rollback``."""
    return UpdateCommand(
        hyperparameters={name: partial[name] for name in knobs},
        alpha=partial[ALPHA],
        weight_modulation=partial.get("weight_modulation") or None,
        weight_ops=partial.get("weight_ops") or None,
        rationale=partial.get("rationale", ""),
        rollback=partial.get("rollback", False),
    )


def validate_answer(text: str, m: EpochMetrics, command_space: str = "free") -> CheckedAnswer:
    """An answer text parsed (``agents.proposals.parse``) and checked (:func:`check_proposal`): the errors of
    both, the notes of both. Never raises for any text, whatever its size or nesting."""
    parsed = parse_answer(text, m)
    if parsed.proposal is None:
        return CheckedAnswer(None, errors=parsed.errors, notes=parsed.notes)
    checked = check_proposal(parsed.proposal, m, command_space)
    if parsed.errors:
        checked.errors[:0] = parsed.errors
        checked.command = None
    ambiguous = [*parsed.notes.get("ambiguous", []), *checked.notes.get("ambiguous", [])]
    checked.notes = {**parsed.notes, **checked.notes, **({"ambiguous": ambiguous} if ambiguous else {})}
    return checked

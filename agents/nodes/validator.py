"""validator: parse and check an answer — JSON, fields (one per knob of the task, named as the task's
``TaskSpec`` declares them, and ``alpha``), types, NaN/inf, ranges, layer names, tensor shapes, payload
size, delta norms, operation seeds. Out-of-range numbers are clamped and each clamp recorded; in the
grid command space every number is snapped to the nearest grid value, and that is recorded as a clamp
too. What cannot be clamped is an error for the repairer. The fields that passed are kept in
``partial``; how the JSON object was found in the answer (reasoning set aside, lenient parsing, a
field given twice, ...) goes to ``notes``."""

from __future__ import annotations

import math
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from agents.nodes.answer_text import find_answer_object
from agents.state import AgentState
from agents.trends import current_values
from bus.messages import ALPHA_RANGE, MAX_OP_FRACTION, EpochMetrics, UpdateCommand, WeightOp

ALPHA = "alpha"  # the trainer's blend ratio: every command has it beside the task's knobs
MAX_ANSWER_CHARS = 16 * 1024 * 1024
MAX_MODULATION_ELEMENTS = 500_000  # the largest MNIST layer (fc.0.weight) has 401,408
MAX_DELTA_NORM_RATIO = MAX_OP_FRACTION  # one epoch's delta may move a layer by at most 5% of its weight norm
MAX_OPS = 16
MAX_RATIONALE_CHARS = 2000
MAX_SEED = 2**63 - 1  # a weight operation's noise seed: any non-negative 64-bit signed integer
OP_VALUE_KEYS = {"scale": "factor", "shrink": "amount", "noise": "scale"}
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


def required_fields(m: EpochMetrics) -> list[str]:
    """The numeric fields every answer must have: the task's knobs by name, then ``alpha``."""
    return [*m.task.knob_names(), ALPHA]


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


def _check_number(name: str, value: Any, bounds: tuple[float, float], clamped: dict, errors: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
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
    low, high = bounds
    if not low <= value <= high:
        clamped[name] = {"from": value, "to": min(max(value, low), high)}
        value = clamped[name]["to"]
    return value


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


def _check_op(
    layer: str, spec: dict, m: EpochMetrics, clamped: dict, errors: list[str], grid: bool
) -> WeightOp | None:
    op = spec.get("op")
    if op not in OP_VALUE_KEYS:
        errors.append(f"operation on {layer!r} must have op one of {sorted(OP_VALUE_KEYS)}, got {str(op)[:40]!r}")
        return None
    key = OP_VALUE_KEYS[op]
    value = spec.get(key, spec.get("value"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{op} on {layer!r} needs a number {key!r}, got {str(value)[:40]!r}")
        return None
    if isinstance(value, int) and abs(value) > 1e6:  # also keeps huge integers away from float()
        value = 1e6 if value > 0 else -1e6
    if not math.isfinite(value):
        errors.append(f"{op} on {layer!r} has a non-finite {key}: {value}")
        return None
    low, high = OP_RANGES[op]
    if not low <= value <= high:
        clamped[f"weight_ops.{layer}.{key}"] = {"from": float(value), "to": min(max(value, low), high)}
        value = min(max(value, low), high)
    if grid:
        value = _snap(f"weight_ops.{layer}.{key}", float(value), OP_CHOICES[key], clamped)
    return WeightOp(layer=layer, op=op, value=float(value), seed=_seed(layer, spec, m, clamped))


def _seed(layer: str, spec: dict, m: EpochMetrics, clamped: dict) -> int:
    """The operation's noise seed: the integer ``seed`` the answer gives (a replayed command keeps its
    recorded noise), else one derived from run, epoch and layer. A ``seed`` that is not an integer in
    [0, 2**63) is replaced by the derived one, and that is recorded as a clamp."""
    derived = zlib.crc32(f"{m.run_id}:{m.epoch}:{layer}".encode())
    if "seed" not in spec:
        return derived
    seed = spec["seed"]
    if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        return seed
    clamped[f"weight_ops.{layer}.seed"] = {"from": str(seed)[:40], "to": derived}
    return derived


def _modulation_items(raw: Any, errors: list[str]) -> list[tuple[str, Any]]:
    """(layer, raw delta or op spec) pairs from any of the accepted forms."""
    if isinstance(raw, dict) and "layer" in raw and "op" in raw:
        raw = [raw]
    if isinstance(raw, list):
        items = []
        for spec in raw:
            if not isinstance(spec, dict) or not isinstance(spec.get("layer"), str):
                errors.append(f'each weight operation must be an object with "layer" and "op", got {str(spec)[:80]!r}')
                continue
            items.append((spec["layer"], spec))
        return items
    if isinstance(raw, dict):
        return list(raw.items())
    errors.append(f"weight_modulation must be an object or a list of operations, got {type(raw).__name__}")
    return []


def _check_modulation(
    raw: Any, m: EpochMetrics, clamped: dict, errors: list[str], ambiguous: list[str], grid: bool = False
) -> tuple[dict[str, list], list[WeightOp]]:
    """Raw deltas and compact operations that passed; every failure is an error naming the layer.
    A layer named twice is ambiguous: its first entry is taken and the rest listed in ``ambiguous``.
    In the grid command space only operations are taken, at most ``GRID_MAX_OPS``."""
    deltas: dict[str, list] = {}
    ops: list[WeightOp] = []
    if raw is None or raw == {} or raw == []:
        return deltas, ops
    items = _modulation_items(raw, errors)
    if len(items) > MAX_OPS:
        errors.append(f"weight_modulation has {len(items)} entries, at most {MAX_OPS} allowed")
        return deltas, ops
    if grid:
        raw_layers = [layer for layer, spec in items if not isinstance(spec, dict)]
        if raw_layers:
            errors.append(f"the grid command space takes weight operations, not raw deltas (for {raw_layers[:4]})")
            return deltas, ops
        if len(items) > GRID_MAX_OPS:
            clamped["weight_ops.count"] = {"from": len(items), "to": GRID_MAX_OPS, "grid": True}
            items = items[:GRID_MAX_OPS]
    seen: set[str] = set()
    elements = 0
    for layer, spec in items:
        if layer not in m.param_shapes:
            errors.append(f"weight_modulation names unknown layer {layer!r}; known layers: {', '.join(m.param_shapes)}")
            continue
        if layer in seen:
            ambiguous.append(f"weight_modulation names {layer!r} more than once; the first entry is used")
            continue
        seen.add(layer)
        if isinstance(spec, dict):
            op = _check_op(layer, spec, m, clamped, errors, grid)
            if op is not None:
                ops.append(op)
            continue
        elements += int(np.prod(m.param_shapes[layer]))
        if elements > MAX_MODULATION_ELEMENTS:
            errors.append(f"weight_modulation exceeds {MAX_MODULATION_ELEMENTS} elements at {layer!r}")
            continue
        delta = _check_raw_delta(layer, spec, m, clamped, errors)
        if delta is not None:
            deltas[layer] = delta
    return deltas, ops


@dataclass
class CheckedAnswer:
    """The validator's verdict on one answer: the command (None when ``errors``), the fields that
    passed, every clamp and grid snap, and how the JSON object was found (see ``answer_text``)."""

    command: UpdateCommand | None
    partial: dict[str, Any] = field(default_factory=dict)
    clamped: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def validate_answer(text: str, m: EpochMetrics, command_space: str = "free") -> CheckedAnswer:
    """Check one answer ``text`` against the state after epoch ``m``: a field per knob of ``m.task`` and
    ``alpha`` (:func:`required_fields`), optional ``weight_modulation``, ``rationale``. ``command_space``
    is ``free`` (any number in :func:`allowed_ranges`) or ``grid`` (numbers snapped to :func:`grid_choices`).
    Never raises for any text, whatever its size or nesting."""
    if len(text) > MAX_ANSWER_CHARS:
        return CheckedAnswer(None, errors=[f"answer of {len(text)} characters exceeds {MAX_ANSWER_CHARS}"])
    required = required_fields(m)
    found = find_answer_object(text, tuple(required))
    if found.value is None:
        return CheckedAnswer(None, errors=[found.error or "answer contains no JSON object"], notes=found.notes)
    answer = found.value
    checked = CheckedAnswer(None, notes=found.notes)
    grid = command_space == "grid"
    _check_required(answer, required, m, grid, checked)
    _check_weights(answer, m, grid, checked)
    _check_rest(answer, required, checked)
    if not checked.errors:
        checked.command = command_from(checked.partial, m.task.knob_names())
    return checked


def _check_required(answer: dict, required: list[str], m: EpochMetrics, grid: bool, checked: CheckedAnswer) -> None:
    """Each required number into ``checked.partial``: clamped into its range and, in the grid command
    space, snapped to its choices (by ratio for a log-scale knob); a missing or bad one is an error."""
    ranges = allowed_ranges(m)
    choices = grid_choices(m) if grid else {}
    log_scale = {k.name for k in m.task.hyperparameters if k.scale == "log"}
    for name in required:
        if name not in answer:
            checked.errors.append(f"missing required field {name!r}")
            continue
        value = _check_number(name, answer[name], ranges[name], checked.clamped, checked.errors)
        if value is not None and grid:
            value = _snap(name, value, choices[name], checked.clamped, by_ratio=name in log_scale)
        if value is not None:
            checked.partial[name] = value


def _check_weights(answer: dict, m: EpochMetrics, grid: bool, checked: CheckedAnswer) -> None:
    """The answer's ``weight_modulation`` (:func:`_check_modulation`): raw deltas that passed go to
    ``partial["weight_modulation"]``, operations to ``partial["weight_ops"]``, a layer named twice to
    ``notes["ambiguous"]``."""
    ambiguous: list[str] = []
    deltas, ops = _check_modulation(
        answer.get("weight_modulation"), m, checked.clamped, checked.errors, ambiguous, grid
    )
    if ambiguous:
        checked.notes["ambiguous"] = [*checked.notes.get("ambiguous", []), *ambiguous]
    if deltas:
        checked.partial["weight_modulation"] = deltas
    if ops:
        checked.partial["weight_ops"] = ops


def _check_rest(answer: dict, required: list[str], checked: CheckedAnswer) -> None:
    """The rationale (a string, cut to :data:`MAX_RATIONALE_CHARS`), fields no command has (recorded as
    ``clamped["ignored_fields"]``, at most 20) and a note naming the fields snapped to the grid."""
    rationale = answer.get("rationale", "")
    if not isinstance(rationale, str):
        checked.errors.append(f"rationale must be a string, got {type(rationale).__name__}")
        rationale = ""
    checked.partial["rationale"] = rationale[:MAX_RATIONALE_CHARS]
    extra = sorted(set(answer) - {*required, "weight_modulation", "rationale"})
    if extra:
        checked.clamped["ignored_fields"] = extra[:20]
    snapped = sorted(name for name, entry in checked.clamped.items() if isinstance(entry, dict) and entry.get("grid"))
    if snapped:
        checked.notes["off_grid"] = (
            f"{snapped} were off the grid and snapped to the nearest choice: the server may not have applied the schema"
        )


def command_from(partial: dict[str, Any], knobs: list[str]) -> UpdateCommand:
    """The command from checked fields in the flat answer form: the value of each of ``knobs`` by name,
    ``alpha``, optional ``weight_modulation`` (raw deltas) and ``weight_ops``, ``rationale``."""
    return UpdateCommand(
        hyperparameters={name: partial[name] for name in knobs},
        alpha=partial[ALPHA],
        weight_modulation=partial.get("weight_modulation") or None,
        weight_ops=partial.get("weight_ops") or None,
        rationale=partial.get("rationale", ""),
    )


def validator(state: AgentState) -> dict:
    """Check the controller's latest answer (see :func:`validate_answer`); a model-call failure is an
    error at once. Whatever the answer, this node returns an update, never an exception."""
    if state.get("llm_error"):
        return {"command": None, "partial": {}, "clamped": {}, "errors": [f"model call failed: {state['llm_error']}"]}
    m = state["metrics"]
    try:
        checked = validate_answer(state.get("raw_output", ""), m, state.get("command_space", "free"))
    except Exception as exc:  # a defect here must cost a repair round, not the decision; it is logged
        reason = f"the validator could not check this answer: {type(exc).__name__}: {exc}"[:1000]
        structlog.get_logger().error(
            "validator_failed", run_id=m.run_id, epoch=m.epoch, reason=reason, traceback=traceback.format_exc(limit=5)
        )
        checked = CheckedAnswer(None, errors=[reason])
    errors = list(checked.errors)
    if errors and state.get("finish_reason") == "length":
        errors.append("the answer hit the token limit and was cut off (finish_reason length): answer more briefly")
    update: dict[str, Any] = {
        "command": checked.command,
        "partial": checked.partial,
        "clamped": checked.clamped,
        "errors": errors,
    }
    if checked.notes:
        update["notes"] = [{"node": "validator", "action": "parse", "attempt": state.get("attempts", 0), **checked.notes}]
    return update

"""validator: parse and check an answer — JSON, fields, types, NaN/inf, ranges, layer names, tensor
shapes, payload size, delta norms. Out-of-range numbers are clamped and each clamp recorded; what
cannot be clamped is an error for the repairer. The fields that passed are kept in ``partial``."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import numpy as np

from agents.state import AgentState
from bus.messages import (
    ALPHA_RANGE,
    DROPOUT_RANGE,
    LEARNING_RATE_RANGE,
    MAX_OP_FRACTION,
    EpochMetrics,
    UpdateCommand,
    WeightOp,
)

RANGES = {"dropout": DROPOUT_RANGE, "learning_rate": LEARNING_RATE_RANGE, "alpha": ALPHA_RANGE}
# Trust region: how far one epoch's command may move from the current values. Beyond it the value is
# clamped (and the clamp recorded), so one wild answer cannot wreck a run.
MAX_LR_STEP = 3.0  # learning rate may change by at most x3 or /3 per epoch
MAX_DROPOUT_STEP = 0.2
MAX_ANSWER_CHARS = 16 * 1024 * 1024
MAX_MODULATION_ELEMENTS = 500_000  # the largest layer (fc.0.weight) has 401,408
MAX_DELTA_NORM_RATIO = MAX_OP_FRACTION  # one epoch's delta may move a layer by at most 5% of its weight norm
MAX_OPS = 16
MAX_RATIONALE_CHARS = 2000
OP_VALUE_KEYS = {"scale": "factor", "shrink": "amount", "noise": "scale"}
OP_RANGES = {
    "scale": (1.0 - MAX_OP_FRACTION, 1.0 + MAX_OP_FRACTION),
    "shrink": (0.0, MAX_OP_FRACTION),
    "noise": (0.0, MAX_OP_FRACTION),
}


def allowed_ranges(m: EpochMetrics) -> dict[str, tuple[float, float]]:
    """The range each field may take after this epoch: the hard bounds intersected with the trust region."""
    return {
        "dropout": (
            max(DROPOUT_RANGE[0], m.dropout - MAX_DROPOUT_STEP),
            min(DROPOUT_RANGE[1], m.dropout + MAX_DROPOUT_STEP),
        ),
        "learning_rate": (
            max(LEARNING_RATE_RANGE[0], m.lr / MAX_LR_STEP),
            min(LEARNING_RATE_RANGE[1], m.lr * MAX_LR_STEP),
        ),
        "alpha": ALPHA_RANGE,
    }


def extract_json_object(text: str) -> Any:
    """The JSON object in a model answer, tolerating code fences and prose around it."""
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end < start:
        raise ValueError("answer contains no JSON object")
    return json.loads(text[start : end + 1], strict=False)  # tolerate raw newlines inside strings


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
    except (TypeError, ValueError):
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


def _check_op(layer: str, spec: dict, m: EpochMetrics, clamped: dict, errors: list[str]) -> WeightOp | None:
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
    seed = zlib.crc32(f"{m.run_id}:{m.epoch}:{layer}".encode())
    return WeightOp(layer=layer, op=op, value=float(value), seed=seed)


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
    raw: Any, m: EpochMetrics, clamped: dict, errors: list[str]
) -> tuple[dict[str, list], list[WeightOp]]:
    """Raw deltas and compact operations that passed; every failure is an error naming the layer."""
    deltas: dict[str, list] = {}
    ops: list[WeightOp] = []
    if raw is None or raw == {} or raw == []:
        return deltas, ops
    items = _modulation_items(raw, errors)
    if len(items) > MAX_OPS:
        errors.append(f"weight_modulation has {len(items)} entries, at most {MAX_OPS} allowed")
        return deltas, ops
    seen: set[str] = set()
    elements = 0
    for layer, spec in items:
        if layer not in m.param_shapes:
            errors.append(f"weight_modulation names unknown layer {layer!r}; known layers: {', '.join(m.param_shapes)}")
            continue
        if layer in seen:
            errors.append(f"weight_modulation modulates {layer!r} more than once")
            continue
        seen.add(layer)
        if isinstance(spec, dict):
            op = _check_op(layer, spec, m, clamped, errors)
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


def validate_answer(
    text: str, m: EpochMetrics
) -> tuple[UpdateCommand | None, dict[str, Any], dict[str, Any], list[str]]:
    """Check one answer. Returns (command or None, partial fields, clamps, errors)."""
    clamped: dict[str, Any] = {}
    errors: list[str] = []
    partial: dict[str, Any] = {}
    if len(text) > MAX_ANSWER_CHARS:
        return None, partial, clamped, [f"answer of {len(text)} characters exceeds {MAX_ANSWER_CHARS}"]
    try:
        answer = extract_json_object(text)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        return None, partial, clamped, [f"answer is not valid JSON: {exc}"]
    if not isinstance(answer, dict):
        return None, partial, clamped, [f"answer must be a JSON object, got {type(answer).__name__}"]
    ranges = allowed_ranges(m)
    for name in RANGES:
        if name not in answer:
            errors.append(f"missing required field {name!r}")
            continue
        value = _check_number(name, answer[name], ranges[name], clamped, errors)
        if value is not None:
            partial[name] = value
    deltas, ops = _check_modulation(answer.get("weight_modulation"), m, clamped, errors)
    if deltas:
        partial["weight_modulation"] = deltas
    if ops:
        partial["weight_ops"] = ops
    rationale = answer.get("rationale", "")
    if not isinstance(rationale, str):
        errors.append(f"rationale must be a string, got {type(rationale).__name__}")
        rationale = ""
    partial["rationale"] = rationale[:MAX_RATIONALE_CHARS]
    extra = sorted(set(answer) - {*RANGES, "weight_modulation", "rationale"})
    if extra:
        clamped["ignored_fields"] = extra[:20]
    if errors:
        return None, partial, clamped, errors
    return UpdateCommand(**partial), partial, clamped, []


def validator(state: AgentState) -> dict:
    if state.get("llm_error"):
        return {"command": None, "partial": {}, "clamped": {}, "errors": [f"model call failed: {state['llm_error']}"]}
    command, partial, clamped, errors = validate_answer(state.get("raw_output", ""), state["metrics"])
    return {"command": command, "partial": partial, "clamped": clamped, "errors": errors}

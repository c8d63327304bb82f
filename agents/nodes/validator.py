"""validator: parse and check an answer — JSON, fields, types, NaN/inf, ranges, layer names, tensor
shapes, payload size, delta norms. Out-of-range numbers are clamped and each clamp recorded; what
cannot be clamped is an error for the repairer. The fields that passed are kept in ``partial``."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from agents.state import AgentState
from bus.messages import ALPHA_RANGE, DROPOUT_RANGE, LEARNING_RATE_RANGE, EpochMetrics, UpdateCommand

RANGES = {"dropout": DROPOUT_RANGE, "learning_rate": LEARNING_RATE_RANGE, "alpha": ALPHA_RANGE}
MAX_ANSWER_CHARS = 16 * 1024 * 1024
MAX_MODULATION_ELEMENTS = 500_000  # the largest layer (fc.0.weight) has 401,408
MAX_DELTA_NORM_RATIO = 0.05  # one epoch's delta may move a layer by at most 5% of its weight norm
MAX_RATIONALE_CHARS = 2000


def extract_json_object(text: str) -> Any:
    """The JSON object in a model answer, tolerating code fences and prose around it."""
    start, end = text.find("{"), text.rfind("}")
    if start == -1 or end < start:
        raise ValueError("answer contains no JSON object")
    return json.loads(text[start : end + 1])


def _check_number(name: str, value: Any, clamped: dict, errors: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(f"{name} must be a number, got {type(value).__name__} {str(value)[:40]!r}")
        return None
    value = float(value)
    if not math.isfinite(value):
        errors.append(f"{name} must be finite, got {value}")
        return None
    low, high = RANGES[name]
    if not low <= value <= high:
        clamped[name] = {"from": value, "to": min(max(value, low), high)}
        value = clamped[name]["to"]
    return value


def _check_modulation(raw: Any, m: EpochMetrics, clamped: dict, errors: list[str]) -> dict[str, list]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"weight_modulation must be an object of parameter name -> delta, got {type(raw).__name__}")
        return {}
    kept: dict[str, list] = {}
    total = 0
    for name, values in raw.items():
        if name not in m.param_shapes:
            errors.append(f"weight_modulation names unknown layer {name!r}; known layers: {', '.join(m.param_shapes)}")
            continue
        expected = tuple(m.param_shapes[name])
        size = int(np.prod(expected))
        if total + size > MAX_MODULATION_ELEMENTS:
            errors.append(f"weight_modulation exceeds {MAX_MODULATION_ELEMENTS} elements at {name!r}")
            continue
        try:
            delta = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            errors.append(f"delta for {name!r} is not a rectangular array of numbers")
            continue
        if delta.shape != expected:
            errors.append(f"delta for {name!r} has shape {list(delta.shape)}, expected {list(expected)}")
            continue
        if not np.isfinite(delta).all():
            errors.append(f"delta for {name!r} contains NaN or inf")
            continue
        cap = MAX_DELTA_NORM_RATIO * m.weight_norms.get(name, 0.0)
        norm = float(np.linalg.norm(delta))
        if norm > cap:
            delta = delta * (cap / norm) if norm > 0 else delta
            clamped[f"weight_modulation.{name}.norm"] = {"from": norm, "to": cap}
        total += size
        kept[name] = delta.tolist()
    return kept


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
    for name in RANGES:
        if name not in answer:
            errors.append(f"missing required field {name!r}")
            continue
        value = _check_number(name, answer[name], clamped, errors)
        if value is not None:
            partial[name] = value
    modulation = _check_modulation(answer.get("weight_modulation"), m, clamped, errors)
    if modulation:
        partial["weight_modulation"] = modulation
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
    command, partial, clamped, errors = validate_answer(state.get("raw_output", ""), state["metrics"])
    return {"command": command, "partial": partial, "clamped": clamped, "errors": errors}

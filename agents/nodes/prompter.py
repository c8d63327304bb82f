"""prompter: the training state as the text a careful human would read before deciding."""

from __future__ import annotations

import json

from agents.nodes.validator import (
    GRID_MAX_OPS,
    MAX_DELTA_NORM_RATIO,
    OP_CHOICES,
    OP_VALUE_KEYS,
    allowed_ranges,
    grid_choices,
)
from agents.state import AgentState
from agents.trends import training_trends
from bus.messages import EpochMetrics

HISTORY_ROWS = 5  # with the rest, ~700 tokens: well inside the local model's 2048-token context


def command_schema(m: EpochMetrics, command_space: str = "free") -> dict:
    """JSON schema of the answer for this epoch, with layers by their real names.

    ``free``: numbers with the ranges allowed now (the paper's form). ``grid``: each field is one of a
    few values around the current one (halve/keep/double the learning rate, dropout -0.1/+0/+0.1, ...).
    Servers that constrain decoding with the schema (llama.cpp) can then only emit sensible commands —
    what makes a 135M-parameter model usable as a controller.
    """
    if command_space == "grid":
        fields = {name: {"enum": choices} for name, choices in grid_choices(m).items()}
        values = {key: {"enum": OP_CHOICES[key]} for key in OP_VALUE_KEYS.values()}
        max_ops = GRID_MAX_OPS
    else:
        ranges = allowed_ranges(m)
        fields = {name: {"type": "number", "minimum": low, "maximum": high} for name, (low, high) in ranges.items()}
        values = {key: {"type": "number"} for key in OP_VALUE_KEYS.values()}
        max_ops = 4
    layers = {"type": "string", "enum": [n for n in m.param_shapes if n.endswith("weight")]}
    # One alternative per operation, each requiring its own value key, so constrained decoding
    # cannot emit an operation without its number.
    operation = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"layer": layers, "op": {"const": op}, key: values[key]},
                "required": ["layer", "op", key],
            }
            for op, key in OP_VALUE_KEYS.items()
        ]
    }
    return {
        "type": "object",
        "properties": {
            **fields,
            "weight_modulation": {"type": "array", "items": operation, "maxItems": max_ops},
            "rationale": {"type": "string", "maxLength": 300},
        },
        "required": ["dropout", "learning_rate", "alpha", "rationale"],
    }


# The fixed part comes first so a server that reuses a cached prompt prefix (llama.cpp does) only
# evaluates what changed since the previous epoch.
INSTRUCTIONS = (
    "You steer the training of a CNN on MNIST (Adam optimizer). After each epoch you choose dropout, "
    "learning_rate and alpha for the next epoch, and may modulate weights. Keep a value unchanged unless the "
    "trends below give a reason: lower the learning rate when validation accuracy stalls, raise dropout when the "
    "train/val gap widens.\n"
    'weight_modulation is optional: a list like [{"layer": "fc.3.weight", "op": "scale", "factor": 0.98}]. '
    "Ops: scale (factor), shrink (amount), noise (scale); each moves a layer by at most "
    f"{MAX_DELTA_NORM_RATIO:.0%} of its norm, and alpha weighs it against Adam's step. Leave it out unless you are sure.\n"
    "Answer with one JSON object only."
)


def prompt_schema(m: EpochMetrics, command_space: str) -> dict:
    """The schema as shown in the prompt: weight operations are explained in words above, so their
    sub-schema (a third of the tokens) is left to the server's constrained decoding."""
    schema = command_schema(m, command_space)
    properties = {**schema["properties"], "weight_modulation": {"type": "array", "description": "optional operations"}}
    return {**schema, "properties": properties}


def render_prompt(m: EpochMetrics, feed_reflection: bool = True, command_space: str = "free") -> str:
    t = training_trends(m)
    ranges = allowed_ranges(m)
    lines = [
        INSTRUCTIONS,
        "",
        f"Regime {m.regime} ({m.n_train} training images). Epoch {m.epoch} of {m.epochs_total} just finished.",
        "epoch: train_acc train_loss | val_acc val_loss | lr dropout alpha",  # 3 digits: numbers cost a token per digit
    ]
    lines += [
        f"{h.epoch}: {h.train_acc:.3f} {h.train_loss:.3f} | {h.val_acc:.3f} {h.val_loss:.3f} | {h.lr:.2g} {h.dropout:.2g} {h.alpha:.2g}"
        for h in m.history[-HISTORY_ROWS:]
    ]
    lines += [
        f"Best val_acc {t.best_val_acc:.4f} at epoch {t.best_epoch} ({t.epochs_since_best} epochs ago). "
        f"Train/val gap {t.gap:+.4f} (previous epoch {t.previous_gap:+.4f}).",
        "Gradient/weight norms: "
        + ", ".join(
            f"{name} {m.grad_norms.get(name, 0.0):.2g}/{m.weight_norms.get(name, 0.0):.3g}"
            for name in m.param_shapes
            if name.endswith("weight")
        ),
        f"Current: dropout {m.dropout:.2f}, learning_rate {m.lr:.2e}, alpha {m.alpha:.2f}.",
    ]
    if m.previous_command is not None:
        # The previous command is what "Current" shows (it was applied); its reason is what is new.
        previous = f"That was your previous command: {m.previous_command.rationale[:80]!r}."
        if feed_reflection and m.previous_reflection is not None:
            previous += f" Verdict on it: {m.previous_reflection.verdict} ({m.previous_reflection.text[:80]})."
        lines.append(previous)
    lines += [
        "Allowed now: " + ", ".join(f"{name} in [{low:.3g}, {high:.3g}]" for name, (low, high) in ranges.items()) + ".",
        "To keep a value, repeat the current one. Schema: "
        + json.dumps(prompt_schema(m, command_space), separators=(",", ":")),
    ]
    return "\n".join(lines)


def prompter(state: AgentState) -> dict:
    prompt = render_prompt(state["metrics"], state.get("feed_reflection", True), state.get("command_space", "free"))
    return {"prompt": prompt, "attempts": 0, "repair_attempts": 0, "feedback": []}

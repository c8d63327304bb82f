"""prompter: the training state as the text a careful human would read before deciding."""

from __future__ import annotations

import json

from agents.state import AgentState
from agents.trends import training_trends
from bus.messages import ALPHA_RANGE, DROPOUT_RANGE, LEARNING_RATE_RANGE, EpochMetrics

HISTORY_ROWS = 8  # keeps the prompt well inside a small local model's context

COMMAND_SCHEMA = {
    "type": "object",
    "properties": {
        "dropout": {"type": "number", "minimum": DROPOUT_RANGE[0], "maximum": DROPOUT_RANGE[1]},
        "learning_rate": {"type": "number", "minimum": LEARNING_RATE_RANGE[0], "maximum": LEARNING_RATE_RANGE[1]},
        "alpha": {"type": "number", "minimum": ALPHA_RANGE[0], "maximum": ALPHA_RANGE[1]},
        "weight_modulation": {"type": "object", "description": "optional: parameter name -> delta of that exact shape"},
        "rationale": {"type": "string"},
    },
    "required": ["dropout", "learning_rate", "alpha", "rationale"],
}


def render_prompt(m: EpochMetrics) -> str:
    t = training_trends(m)
    lines = [
        "You steer the training of a CNN on MNIST. After each epoch you choose the hyperparameters for the next one.",
        f"Regime: {m.regime} ({m.n_train} training images). Epoch {m.epoch} of {m.epochs_total} just finished.",
        "",
        "Recent epochs (epoch: train_acc train_loss | val_acc val_loss | lr dropout alpha):",
    ]
    for h in m.history[-HISTORY_ROWS:]:
        lines.append(
            f"  {h.epoch}: {h.train_acc:.4f} {h.train_loss:.4f} | {h.val_acc:.4f} {h.val_loss:.4f} | {h.lr:.2e} {h.dropout:.2f} {h.alpha:.2f}"
        )
    lines += [
        "",
        f"Trends: best val_acc {t.best_val_acc:.4f} at epoch {t.best_epoch} ({t.epochs_since_best} epochs ago); "
        f"train/val gap {t.gap:+.4f} (previous epoch {t.previous_gap:+.4f}).",
        "Per-layer gradient norm / weight norm: "
        + ", ".join(
            f"{name} {m.grad_norms.get(name, 0.0):.3g}/{m.weight_norms.get(name, 0.0):.3g}"
            for name in m.param_shapes
            if name.endswith("weight")
        ),
        f"Current: dropout {m.dropout:.2f}, learning_rate {m.lr:.2e}, alpha {m.alpha:.2f}.",
    ]
    if m.previous_command is not None:
        pc = m.previous_command
        lines.append(
            f"Your previous command: dropout {pc.dropout:.2f}, learning_rate {pc.learning_rate:.2e}, alpha {pc.alpha:.2f} ({pc.rationale[:160]})."
        )
    if m.previous_reflection is not None:
        lines.append(f"Verdict on it: {m.previous_reflection.verdict}: {m.previous_reflection.text}")
    lines += [
        "",
        f"Allowed: dropout in [{DROPOUT_RANGE[0]}, {DROPOUT_RANGE[1]}], learning_rate in [{LEARNING_RATE_RANGE[0]:g}, {LEARNING_RATE_RANGE[1]:g}], "
        f"alpha in [{ALPHA_RANGE[0]}, {ALPHA_RANGE[1]}]. weight_modulation is optional; leave it out unless you are sure.",
        "Answer with one JSON object only, matching this schema:",
        json.dumps(COMMAND_SCHEMA, separators=(",", ":")),
    ]
    return "\n".join(lines)


def prompter(state: AgentState) -> dict:
    return {"prompt": render_prompt(state["metrics"]), "attempts": 0, "repair_attempts": 0, "feedback": []}

"""Every text a model reads, in one place: the free-form controller's prompt (what the prompter node writes), the
judge's prompt, and the expert form's state summary and choice instructions, with their system messages.

Everything task-specific comes from the message's ``TaskSpec``: the description, the objective and its
direction, the budget's unit, the knobs with their descriptions and families. The controller's prompt opens with
what stays the same for a whole run (instructions, task, knobs) so a server that reuses a cached prompt prefix
(llama.cpp does) only evaluates what changed since the previous epoch; the embedded 135M model has a 2048-token
context, so every line is short and numbers have 3 significant digits.
"""

from __future__ import annotations

import json
import math

from agents.proposals.check import (
    ALPHA,
    GRID_MAX_OPS,
    MAX_DELTA_NORM_RATIO,
    OP_CHOICES,
    OP_VALUE_KEYS,
    allowed_ranges,
    grid_choices,
    required_fields,
)
from agents.controllers.rules import learning_rate_knob, regularization_knobs
from agents.trends import (
    DISPLAY_PREFIXES,
    current_values,
    direction_words,
    objective_decimals,
    train_counterpart,
    training_trends,
)
from bus.messages import EpochMetrics, Reflection

# The controller and the judge share the system message and the first part of the user message, so
# llama.cpp reuses that cached prefix across both calls instead of evaluating it twice per epoch.
CONTROLLER_SYSTEM = (
    "You are the controller of a neural-network training run. You read the training state and answer "
    "with exactly one JSON object that follows the given schema. No prose outside the JSON."
)


def judge_prompt(m: EpochMetrics, rule: Reflection, change_text: str) -> str:
    """The judge's prompt: the controller's fixed opening (a shared cached prefix), then the objective's
    name, direction and values before and after the decision, its noise band, and its training counterpart."""
    spec, d = m.task, objective_decimals(m.task)
    before, after = rule.objective_before, rule.objective_after
    train = train_counterpart(spec.objective, m.metrics)
    now = f"; {train} is now {m.metrics[train]:.{d}f}" if train is not None else ""
    given = f" {instruction_line(m)}." if m.instruction is not None else ""
    return (
        f"{preamble(m)}{given}\n\nNow judge your previous decision instead. After epoch {rule.about_epoch} the "
        f"decision was {change_text}. {rule.objective} ({direction_words(spec)}) went from {before:.{d}f} to "
        f"{after:.{d}f} ({after - before:+.{d}f}; a change within {spec.noise_band:g} is noise){now}. Was the "
        "decision beneficial, harmful or neutral? Give the verdict and one sentence that explains it with these "
        "numbers."
    )


HISTORY_ROWS = 5  # with the rest, ~800 tokens: well inside the local model's 2048-token context
OTHER_METRICS = 3  # history columns beside the objective


PAIRED_PREFIXES = ("val", "eval", "test", "train")


def command_schema(m: EpochMetrics, command_space: str = "free") -> dict:
    """JSON schema of the answer for this epoch: one field per knob of the task, ``alpha``, optional
    ``weight_modulation`` with layers by their real names, optional ``rollback`` (to the best epoch so far), and
    ``rationale``.

    ``free``: numbers with the ranges allowed now (the paper's form). ``grid``: each field is one of a
    few values around the current one (each knob's ``Hyperparameter.grid``: MNIST's learning rate
    halved/kept/doubled, dropout -0.1/+0/+0.1; alpha in steps of 0.2). Servers that constrain decoding
    with the schema (llama.cpp) can then only emit sensible commands — what makes a 135M-parameter model
    usable as a controller.
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
            "rollback": {"type": "boolean"},
            "rationale": {"type": "string", "maxLength": 300},
        },
        "required": [*required_fields(m), "rationale"],
    }


def prompt_schema(m: EpochMetrics, command_space: str) -> dict:
    """The schema as shown in the prompt: weight operations are explained in words above, so their
    sub-schema (a third of the tokens) is left to the server's constrained decoding."""
    schema = command_schema(m, command_space)
    properties = {**schema["properties"], "weight_modulation": {"type": "array", "description": "optional operations"}}
    return {**schema, "properties": properties}


def hints(m: EpochMetrics) -> str:
    """Rules of thumb for the knobs this task has, e.g. 'lower learning_rate when val_acc stalls'."""
    learning_rate, regularizers = learning_rate_knob(m.task), regularization_knobs(m.task)
    rules = [f"lower {learning_rate.name} when {m.task.objective} stalls"] if learning_rate is not None else []
    regulariser = regularizers[0].name if regularizers else None
    if regulariser is not None and train_counterpart(m.task.objective, m.metrics) is not None:
        rules.append(f"raise {regulariser} when the train/val gap widens")
    return f": {', '.join(rules)}" if rules else ""


def preamble(m: EpochMetrics) -> str:
    """The part of the prompt that stays the same for a whole run: what to do, the task and its
    objective, the knobs. The judge's prompt opens with it too (one cached prefix for both)."""
    spec = m.task
    weights = [n for n in m.param_shapes if n.endswith("weight")]
    example = json.dumps([{"layer": weights[-1] if weights else "layer", "op": "scale", "factor": 0.98}])
    knobs = "\n".join(f"- {k.name}: {k.description}" for k in spec.hyperparameters)
    return (
        "You steer a neural-network training run. After each epoch you choose the hyperparameters and alpha for "
        "the next epoch, and may modulate weights. Keep a value unchanged unless the trends below give a reason"
        f"{hints(m)}.\n"
        f"weight_modulation is optional: a list like {example}. Ops: scale (factor), shrink (amount), noise "
        f"(scale); each moves a layer by at most {MAX_DELTA_NORM_RATIO:.0%} of its norm, and alpha (0 to 1) weighs "
        "it against the optimizer's step. Leave it out unless you are sure.\n"
        '"rollback": true returns to the weights of the best epoch so far (shown below), then applies your values: '
        "only when the objective has collapsed far below that best.\n"
        "Answer with one JSON object only.\n\n"
        f"Task: {spec.description}\n"
        f"Objective: {spec.objective}, {direction_words(spec)}. Regime {m.regime}: {m.budget} {spec.budget_unit}.\n"
        f"Hyperparameters:\n{knobs}"
    )


def display_metrics(m: EpochMetrics) -> list[str]:
    """Up to ``OTHER_METRICS`` metrics shown beside the objective: its training counterpart first, then
    train/held-out pairs of other kinds (val_loss, train_loss), then the rest in the task's order."""
    objective = m.task.objective
    chosen = [name] if (name := train_counterpart(objective, m.metrics, DISPLAY_PREFIXES)) else []
    kinds: dict[str, list[str]] = {}
    for metric in m.metrics:
        prefix, _, kind = metric.partition("_")
        if prefix in PAIRED_PREFIXES and kind:
            kinds.setdefault(kind, []).append(metric)
    for names in kinds.values():
        if len(names) >= 2 and objective not in names:
            chosen += sorted(names, key=lambda metric: metric.startswith("train_"))  # held-out first
    rest = [metric for metric in m.metrics if metric not in chosen and metric != objective]
    return (chosen + rest)[:OTHER_METRICS]


def history_lines(m: EpochMetrics) -> list[str]:
    """The header and the last ``HISTORY_ROWS`` epochs: objective and other metrics | knobs alpha."""
    metrics = [m.task.objective, *display_metrics(m)]
    knobs = m.task.knob_names()
    lines = [f"epoch: {' '.join(metrics)} | {' '.join(knobs)} alpha"]  # 3 digits: numbers cost a token per digit
    for h in m.history[-HISTORY_ROWS:]:
        scores = " ".join(f"{h.metrics.get(name, float('nan')):.3g}" for name in metrics)
        values = " ".join(f"{h.hyperparameters.get(name, float('nan')):.3g}" for name in knobs)
        lines.append(f"{h.epoch}: {scores} | {values} {h.alpha:.2g}")
    return lines


def trend_line(m: EpochMetrics) -> str:
    """Best objective so far, by the task's direction, and, when the objective has a training counterpart,
    the generalization gap."""
    t, d = training_trends(m), objective_decimals(m.task)
    extreme = "highest" if m.task.mode == "max" else "lowest"
    line = f"Best ({extreme}) {t.objective} {t.best:.{d}f} at epoch {t.best_epoch} ({t.epochs_since_best} epochs ago)."
    if t.gap is not None:
        line += (
            f" Train/val gap {t.gap:+.{d}f} (previous epoch {t.previous_gap:+.{d}f}; "
            f"positive: {t.train_metric} is better than {t.objective})."
        )
    return line


def render_prompt(m: EpochMetrics, feed_reflection: bool = True, command_space: str = "free") -> str:
    """The controller's prompt for the state after epoch ``m`` (fixed part first, see :func:`instructions`)."""
    values = {**current_values(m), ALPHA: m.alpha}
    ranges = allowed_ranges(m)
    lines = [preamble(m), "", f"Epoch {m.epoch} of {m.epochs_total} just finished.{effect_note(m)}", *history_lines(m)]
    lines += [
        trend_line(m),
        "Gradient/weight norms: "
        + ", ".join(
            f"{name} {m.grad_norms.get(name, 0.0):.2g}/{m.weight_norms.get(name, 0.0):.3g}"
            for name in m.param_shapes
            if name.endswith("weight")
        ),
        "Current values, in the range allowed now: "
        + ", ".join(f"{name} {values[name]:.3g} in [{low:.3g}, {high:.3g}]" for name, (low, high) in ranges.items())
        + ".",
    ]
    if m.instruction is not None:
        lines.append(instruction_line(m))
    if m.previous_command is not None:
        # The previous command is what "Current" shows (it was applied); its reason is what is new.
        previous = f"That was your previous command: {m.previous_command.rationale[:80]!r}."
        if feed_reflection and m.previous_reflection is not None:
            previous += f" Verdict on it: {m.previous_reflection.verdict} ({m.previous_reflection.text[:80]})."
        lines.append(previous)
    lines.append(
        "To keep a value, repeat the current one. Schema: "
        + json.dumps(prompt_schema(m, command_space), separators=(",", ":"))
    )
    return "\n".join(lines)


def effect_note(m: EpochMetrics) -> str:
    """Under asynchronous decisions (``--decisions async``), the sentence saying which epoch the command takes
    effect at: training goes on while it is decided. Empty under the synchronous protocol, whose prompts stay as
    they were."""
    if m.decisions != "async" or m.command_epoch is None:
        return ""
    return (f" Training goes on while you decide: your command takes effect at epoch {m.command_epoch}"
            f" at the earliest, on the settings of then.")  # fmt: skip


def repair_request(errors: list[str]) -> str:
    """What the free-form model reads after a rejected answer: the exact errors, and how to answer again."""
    return "That answer was rejected:\n- " + "\n- ".join(errors) + "\nAnswer again with one corrected JSON object only."


def instruction_line(m: EpochMetrics) -> str:
    """The user's instruction as the prompt states it: to be followed within the allowed ranges."""
    return f"The user's instruction (follow it within the allowed ranges): {m.instruction.text!r}"


# Two worked examples, on metrics no task here reports (so a copy of them is caught), lead the 135M model to a
# sentence about this epoch's numbers; without them it mostly wrote generalities ("it is not possible to change
# the hyperparameters of a neural network"), measured on bench.guidance's states.
EXPERT_SYSTEM = (
    "You steer the training of a neural network. You choose what to do after each epoch and say why, with the "
    'numbers of this epoch. For example: "We should lower the learning rate, because val_loss has stayed near 0.52 '
    'since epoch 4." or "We should keep every hyperparameter as it is, because test_f1 rose from 0.61 to 0.64, a new '
    'best."'
)
NEUTRAL_STATE = "N/A"


ANSWER_OPENING = "We should"
RECENT_EPOCHS = 5


def chatml(system: str, user: str, opening: str) -> str:
    """A raw prompt in the ChatML template that SmolLM2-Instruct was trained with, the assistant's answer opened."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{opening}"
    )


def state_summary(m: EpochMetrics, signal_reason: str) -> str:
    """The deterministic trajectory summary the model reads: task, objective with direction, the last epochs
    of the objective, the generalization gap, the knobs now, what the evidence says, the instruction."""
    spec, t, d = m.task, training_trends(m), objective_decimals(m.task)
    recent = " ".join(f"{h.metrics.get(spec.objective, math.nan):.{d}f}" for h in m.history[-RECENT_EPOCHS:])
    lines = [
        f"Task: {spec.description}",
        f"Epoch {m.epoch} of {m.epochs_total}. {spec.objective} ({direction_words(spec)}) over the last epochs: {recent}; "
        f"best {t.best:.{d}f} at epoch {t.best_epoch}.",
    ]
    if t.gap is not None:
        lines.append(
            f"{t.train_metric} is better than {spec.objective} by {t.gap:.{d}f} (previous epoch {t.previous_gap:.{d}f})."
        )
    lines.append(
        "Now: " + ", ".join(f"{name.replace('_', ' ')} {value:.3g}" for name, value in current_values(m).items()) + "."
    )
    lines.append(f"Evidence: {signal_reason}.")
    if m.instruction is not None:
        lines.append(f'The user says: "{m.instruction.text[:300]}"')
    lines.append(f"What should we do from epoch {m.command_epoch} on?" if m.decisions == "async" and m.command_epoch
                 else "What should we do for the next epoch?")
    return "\n".join(lines)


CHOICE_INSTRUCTIONS = (
    "Choose one of these actions for the next epoch and say why in one sentence about this epoch's numbers. "
    'Answer with JSON only: {"choice": <action key>, "rationale": <sentence>}.'
)


# The subject and verb of each signal's reason; {better}/{worse} say how the objective moved in its mode's terms.
SIGNAL_OPENINGS = {"steady": "{objective} {better}", "plateau": "{objective} has not", "diverging": "{objective} {worse}",
                   "collapsed": "{objective} {worse}",
                   "overfitting": "{train}", "settling": "the last change", "unclear": "{objective} moved"}  # fmt: skip
# How a candidate action reads to the model that scores it: a log-scale knob's usual factors have their own verb.
FACTOR_PHRASES = ((0.5, "halve {}"), (2.0, "double {}"), (1 / 3, "cut {} to a third"), (3.0, "triple {}"))
HOLD_PHRASE = "keep every hyperparameter as it is"

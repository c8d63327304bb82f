"""The guidance benchmark's cases: the built-in :data:`CASES`, the training states they are set in
(:data:`STATES`), the :class:`~bus.messages.EpochMetrics` a case becomes (:func:`case_metrics`), and
:func:`load_cases`, which reads further cases from a JSON-lines file, one case a line::

    {"kind": "explicit", "task": "mnist", "state": "plateau", "instruction": "lr/2",
     "want": [["learning_rate", -1]], "against": [["learning_rate", 1]], "lang": "en", "family": "code"}

``kind``, ``state`` and ``instruction`` (a string, or null for evidence alone) are required; the other keys of
:class:`Case` take its defaults when missing; keys :class:`Case` does not have are kept in ``Case.extra``.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from bus.messages import EpochMetrics, EpochSummary, Instruction, TaskSpec

KINDS = ("explicit", "goal", "evidence")
ALPHA = "alpha"  # the blend weight: a move a case may want or rule out on every task, besides the task's knobs


@dataclass(frozen=True)
class Case:
    """One benchmark case: a ``state`` name (:data:`STATES`), an instruction (None: evidence only), what to
    expect, and the kind of case it counts for. ``lang`` is the instruction's language (a code such as ``en``,
    ``zh``), by which the rates are also reported; ``family`` the phrasing family a corpus files it under;
    ``extra`` any further keys of a cases file, kept for the per-case record and otherwise unused."""

    kind: str  # explicit | goal | evidence
    state: str
    instruction: str | None
    want: tuple[tuple[str, int], ...] = ()
    against: tuple[tuple[str, int], ...] = ()
    hold: bool = False
    all_of: bool = False
    weights: bool = False  # a weight modulation must be applied
    task: str = "mnist"
    lang: str = "en"
    family: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


LR, DROP, WD, ENT, CLIP = "learning_rate", "dropout", "weight_decay", "ent_coef", "clip_range"
DOWN, UP = -1, 1

CASES: tuple[Case, ...] = (
    # explicit instructions, several wordings and states
    Case("explicit", "steady", "halve the learning rate", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "plateau", "Please double the learning rate.", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "overfitting", "raise dropout by 0.1", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "lower the dropout a bit", want=((DROP, DOWN),), against=((DROP, UP),)),
    Case("explicit", "plateau", "change nothing", hold=True),
    Case("explicit", "overfitting", "Don't touch anything this epoch.", hold=True),
    Case("explicit", "steady", "shrink the last layer's weights a little", weights=True),
    Case("explicit", "steady", "add a little noise to the weights of the first layer", weights=True),
    Case("explicit", "unclear", "increase the step size", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "unclear", "reduce the lr by a factor of 3", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "steady", "set dropout to 0.35", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "set the learning rate to 10", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "plateau", "cut the learning rate and raise dropout", want=((LR, DOWN), (DROP, UP)), all_of=True,
         against=((LR, UP), (DROP, DOWN))),
    Case("explicit", "diverging", "keep the learning rate as it is but lower dropout", want=((DROP, DOWN),),
         against=((LR, UP), (LR, DOWN), (DROP, UP))),
    Case("explicit", "steady", "make the step size smaller at every single decision", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "plateau", "turn dropout down to zero", want=((DROP, DOWN),), against=((DROP, UP),)),
    Case("explicit", "steady", "raise the learning rate by 50%", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "steady", "leave everything as it is", hold=True),
    Case("explicit", "steady", "bump weight decay up", want=((WD, UP),), against=((WD, DOWN),), task="diabetes"),
    Case("explicit", "plateau", "decrease the learning rate slightly", want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("explicit", "steady", "raise the entropy coefficient", want=((ENT, UP),), against=((ENT, DOWN),), task="cartpole"),
    Case("explicit", "plateau", "lower the clip range", want=((CLIP, DOWN),), against=((CLIP, UP),), task="cartpole"),
    Case("explicit", "unclear", "the learning rate is too high", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "overfitting", "I want dropout at 0.4", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "anneal the lr", want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("explicit", "plateau", "lr 2x", want=((LR, UP),), against=((LR, DOWN),), task="cartpole"),
    # goal-like instructions
    Case("goal", "overfitting", "it is overfitting, fight it", want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("goal", "steady", "converge faster", want=((LR, UP),), against=((LR, DOWN),)),
    Case("goal", "diverging", "be careful, the run is unstable", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "overfitting", "the network memorizes the training set", want=((DROP, UP), (LR, DOWN)),
         against=((DROP, DOWN), (LR, UP))),
    Case("goal", "plateau", "we are stuck, do something", want=((LR, DOWN), (LR, UP))),
    Case("goal", "steady", "training is too slow", want=((LR, UP),), against=((LR, DOWN),)),
    Case("goal", "diverging", "the loss is jumping around", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "steady", "be conservative from now on", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "overfitting", "it generalizes badly", want=((WD, UP), (DROP, UP), (LR, DOWN)),
         against=((WD, DOWN), (DROP, DOWN), (LR, UP)), task="diabetes"),
    Case("goal", "steady", "the model underfits; regularize less", want=((DROP, DOWN), (WD, DOWN), (LR, UP)),
         against=((DROP, UP), (WD, UP)), task="diabetes"),
    Case("goal", "plateau", "explore more", want=((ENT, UP),), against=((ENT, DOWN),), task="cartpole"),
    Case("goal", "steady", "speed things up", want=((LR, UP),), against=((LR, DOWN),), task="cartpole"),
    Case("goal", "overfitting", "increase regularization", want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("goal", "diverging", "make training more stable", want=((LR, DOWN), (CLIP, DOWN)), against=((LR, UP),),
         task="cartpole"),
    # no instruction: unambiguous evidence
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),)),
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),), task="cartpole"),
    Case("evidence", "overfitting", None, want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("evidence", "overfitting", None, want=((DROP, UP), (WD, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP)),
         task="diabetes"),
    Case("evidence", "diverging", None, want=((LR, DOWN),), against=((LR, UP),)),
    Case("evidence", "diverging", None, want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("evidence", "diverging", None, want=((LR, DOWN), (CLIP, DOWN)), against=((LR, UP), (CLIP, UP)), task="cartpole"),
    Case("evidence", "steady", None, hold=True),
    Case("evidence", "steady", None, hold=True, task="diabetes"),
    Case("evidence", "steady", None, hold=True, task="cartpole"),
    Case("evidence", "steady_late", None, hold=True),
)  # fmt: skip

# Objective series (the last value is this epoch) per state, as multiples of the task's scale below; the
# training counterpart's series for the gap. "unclear": a small dip within the noise band.
STATES: dict[str, tuple[list[float], list[float]]] = {
    "steady": ([0.60, 0.70, 0.78, 0.84, 0.88, 0.91], [0.61, 0.71, 0.79, 0.85, 0.89, 0.92]),
    "steady_late": ([0.80, 0.85, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.955], [0.81, 0.86, 0.89, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.965]),
    "plateau": ([0.60, 0.80, 0.900, 0.912, 0.911, 0.910], [0.61, 0.81, 0.91, 0.922, 0.921, 0.920]),
    "overfitting": ([0.60, 0.75, 0.82, 0.86, 0.88, 0.878], [0.62, 0.80, 0.90, 0.96, 0.985, 0.999]),
    "diverging": ([0.60, 0.75, 0.82, 0.86, 0.88, 0.40], [0.61, 0.76, 0.83, 0.87, 0.89, 0.42]),
    "unclear": ([0.60, 0.75, 0.82, 0.86, 0.880, 0.8795], [0.61, 0.76, 0.83, 0.87, 0.89, 0.8895]),
}  # fmt: skip


def task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of the built-in task ``name`` (one of :data:`TASK_METRICS`), knobs at their defaults."""
    from tasks.registry import task_class

    return task_class(name).spec()


TASK_METRICS = {  # objective, training counterpart, how a fraction in STATES maps to the objective's units
    "mnist": ("val_acc", "train_acc", lambda x: x),
    "diabetes": ("val_rmse", "train_rmse", lambda x: 120.0 - 80.0 * x),  # 0.885 -> 49.2 RMSE; the gap beyond 7.5
    "cartpole": ("eval_return_mean", "train_return_mean", lambda x: 500.0 * x),
}
PARAM_SHAPES = {
    "mnist": {"conv.0.weight": [32, 1, 3, 3], "conv.0.bias": [32], "fc.3.weight": [10, 128], "fc.3.bias": [10]},
    "diabetes": {"net.0.weight": [64, 10], "net.0.bias": [64], "net.3.weight": [1, 64], "net.3.bias": [1]},
    "cartpole": {"policy_net.0.weight": [64, 4], "action_net.weight": [2, 64], "value_net.weight": [1, 64]},
}


def case_metrics(case: Case, index: int) -> EpochMetrics:
    """The ``EpochMetrics`` of ``case``: the task's spec at its defaults, the state's history, the instruction
    given now (its first decision)."""
    spec = task_spec(case.task)
    objective, train, scale = TASK_METRICS[case.task]
    values = {k.name: k.default for k in spec.hyperparameters}
    val_series, train_series = STATES[case.state]
    history = [
        EpochSummary(epoch=e + 1, metrics={objective: scale(v), train: scale(t)}, hyperparameters=values, alpha=0.4)
        for e, (v, t) in enumerate(zip(val_series, train_series))
    ]
    shapes = PARAM_SHAPES[case.task]
    instruction = (
        Instruction(instruction_id=f"case-{index}", text=case.instruction, source="flag", received_at=time.time())
        if case.instruction
        else None
    )
    return EpochMetrics(
        run_id=f"guidance-{index}", epoch=len(history), epochs_total=30, task=spec, regime="bench", budget=1000,
        metrics=history[-1].metrics, hyperparameters=values, alpha=0.4, grad_norms={n: 0.1 for n in shapes},
        weight_norms={n: 5.0 for n in shapes}, param_shapes=shapes, wall_s=1.0, history=history,
        instruction=instruction,
    )  # fmt: skip


class CaseFileError(ValueError):
    """A cases file that cannot be used; the message is one line naming the file (and the line, when one is at
    fault)."""


def load_cases(path: str | Path) -> tuple[Case, ...]:
    """The cases of the JSON-lines file ``path``, in file order; blank lines are skipped.

    Raises :class:`CaseFileError` for an unreadable or empty file, and for the first line that is not a JSON
    object, lacks a required key, names an unknown kind, task or state, has a value of the wrong type, or a move
    on a knob its task does not have."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError(f"{path}: cannot read the cases file: {getattr(exc, 'strerror', None) or exc}") from None
    cases = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                cases.append(parse_case(line))
            except ValueError as exc:
                raise CaseFileError(f"{path}:{number}: {exc}") from None
    if not cases:
        raise CaseFileError(f"{path}: no cases (one JSON object a line)")
    return tuple(cases)


def parse_case(line: str) -> Case:
    """The :class:`Case` of one JSON-lines line; raises ValueError saying what is wrong with it."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"a case is a JSON object, got {type(raw).__name__}")
    known = {f.name: f for f in fields(Case) if f.name != "extra"}
    missing = [name for name, f in known.items() if f.default is MISSING and name not in raw]
    if missing:
        raise ValueError(f"missing {', '.join(repr(m) for m in missing)}")
    values = {name: raw.get(name, f.default) for name, f in known.items()}
    for name, allowed in (("kind", KINDS), ("task", tuple(TASK_METRICS)), ("state", tuple(STATES))):
        if values[name] not in allowed:
            raise ValueError(f"unknown {name} {values[name]!r}; one of {', '.join(allowed)}")
    for name in ("hold", "all_of", "weights"):
        if not isinstance(values[name], bool):
            raise ValueError(f"{name!r} must be true or false, got {values[name]!r}")
    for name, optional in (("instruction", True), ("family", True), ("lang", False)):
        value = values[name]
        if not (isinstance(value, str) and value.strip()) and not (optional and value is None):
            raise ValueError(f"{name!r} must be a non-empty string{' or null' if optional else ''}, got {value!r}")
    knobs = [k.name for k in task_spec(values["task"]).hyperparameters] + [ALPHA]
    for name in ("want", "against"):
        values[name] = parse_moves(name, values[name], values["task"], knobs)
    return Case(**values, extra={k: v for k, v in raw.items() if k not in known})


def parse_moves(key: str, moves, task: str, knobs: list[str]) -> tuple[tuple[str, int], ...]:
    """``[[knob, direction], ...]`` as a tuple of moves; direction -1 (down) or 1 (up), knob one of ``knobs``."""
    if not isinstance(moves, list | tuple):
        raise ValueError(f"{key!r} must be a list of [knob, -1 or 1] pairs, got {moves!r}")
    parsed = []
    for move in moves:
        if not (isinstance(move, list | tuple) and len(move) == 2 and isinstance(move[0], str)
                and type(move[1]) is int and move[1] in (DOWN, UP)):  # fmt: skip
            raise ValueError(f"{key!r}: each move is [knob, -1 or 1], got {move!r}")
        if move[0] not in knobs:
            raise ValueError(f"{key!r}: task {task} has no knob {move[0]!r}; its knobs: {', '.join(knobs)}")
        parsed.append((move[0], move[1]))
    return tuple(parsed)


def case_record(case: Case) -> dict:
    """``case`` as one JSON object in the cases file's form (moves as lists), with its extra keys."""
    record = {f.name: getattr(case, f.name) for f in fields(Case) if f.name != "extra"}
    record["want"], record["against"] = [list(m) for m in case.want], [list(m) for m in case.against]
    return {**record, **case.extra}

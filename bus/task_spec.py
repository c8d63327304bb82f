"""What a task declares to the agent: its knobs (:class:`Hyperparameter`) and itself (:class:`TaskSpec`). Both
travel inside every ``EpochMetrics`` (``bus.messages``), which re-exports them; they follow its schema version.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["max", "min"]
# What a knob is, in the field's terms: the instruction reader's goals ("less overfitting" raises every
# regularization knob) and the rule policies (a plateau lowers the learning rate) act on families, not on names,
# so a user's task is steered without an edit to ReflectNet. "other": a knob no goal or rule moves by itself.
Family = Literal["learning_rate", "regularization", "exploration", "clipping", "other"]
# The family of a knob that declares none, by the field's usual names: the built-in tasks' knobs get theirs this
# way, and a task written before families existed keeps its rules (its "learning_rate" is still lowered on a
# plateau).
USUAL_FAMILIES: dict[str, Family] = {
    "learning_rate": "learning_rate", "lr": "learning_rate", "dropout": "regularization",
    "weight_decay": "regularization", "ent_coef": "exploration", "clip_range": "clipping",
}  # fmt: skip
# The aliases of a knob that declares none, by the same usual names.
LEARNING_RATE_ALIASES = ("lr", "learning-rate", "step size", "stepsize", "steps", "update size", "学习率", "学習率")
USUAL_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": LEARNING_RATE_ALIASES, "lr": ("learning rate", *LEARNING_RATE_ALIASES[1:]),
    "dropout": ("drop-out", "drop out", "ドロップアウト"), "weight_decay": ("weight-decay", "l2 penalty", "l2", "ridge penalty", "ridge", "l2 regularization",
                     "l2 regularisation", "l2 reg", "wd", "权重衰减", "重み減衰", "l2正则", "l2 正则"),
    "ent_coef": ("entropy coefficient", "entropy bonus", "entropy", "熵系数", "エントロピー係数"), "clip_range": ("clipping range", "clip", "clip epsilon", "clip ratio", "裁剪范围", "クリップ範囲"),
}  # fmt: skip
USUAL_LABELS = {"learning_rate": "the learning rate", "lr": "the learning rate", "ent_coef": "the entropy coefficient",
                "clip_range": "the clip range"}  # fmt: skip

# Every model on the bus is frozen and strict about unknown fields; NaN/inf travel as JSON constants (a
# diverged loss is data, not a reason to lose the record).
MODEL_CONFIG = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class Hyperparameter(BaseModel):
    """A knob an agent may set between epochs, as a task declares it (``tasks.base.Task.hyperparameters``).

    ``scale="log"``: changes are factors — ``step`` is the grid factor (2.0: halve / keep / double)
    and ``max_change`` the largest factor per decision (3.0: at most ×3 or ÷3). ``scale="linear"``:
    changes are increments — ``step`` is the grid increment and ``max_change`` the largest one.
    ``low``/``high`` are hard bounds no command can cross. Raises ValueError (pydantic's
    ``ValidationError``) for a default outside the bounds or a step that moves nothing.
    """

    model_config = MODEL_CONFIG

    name: str  # the key in commands and records, e.g. "learning_rate"
    default: float
    low: float
    high: float
    scale: Literal["log", "linear"]
    step: float
    max_change: float
    description: str  # plain language, for prompts
    family: Family = "other"
    # Other names an instruction may use for this knob ("lr", "step size"); its own name, with underscores read
    # as spaces, always counts.
    aliases: tuple[str, ...] = ()
    label: str | None = None  # how a sentence names it ("the learning rate"); default: the name, "_" as spaces

    @model_validator(mode="before")
    @classmethod
    def _usual_vocabulary(cls, data):
        """A knob that declares no family, aliases or label gets those of its usual name, if it has one."""
        if isinstance(data, dict) and data.get("name") in USUAL_FAMILIES:
            name = data["name"]
            data = {**data, "family": data.get("family") or USUAL_FAMILIES[name]}
            data.setdefault("aliases", USUAL_ALIASES[name])
            data.setdefault("label", USUAL_LABELS.get(name))
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if not self.low <= self.default <= self.high:
            raise ValueError(
                f"{self.name}: default must lie in [low, high], got {self.default=} {self.low=} {self.high=}"
            )
        if self.scale == "log" and (self.low <= 0 or self.step <= 1 or self.max_change <= 1):
            raise ValueError(f"{self.name}: a log-scale knob needs low > 0, step > 1, max_change > 1")
        if self.scale == "linear" and (self.step <= 0 or self.max_change <= 0):
            raise ValueError(f"{self.name}: a linear knob needs step > 0 and max_change > 0")
        return self

    def vocabulary(self) -> tuple[str, ...]:
        """Every way an instruction may name this knob, lower case: its name with underscores as spaces, its name
        as written, then its aliases."""
        name = self.name.lower()
        return tuple(dict.fromkeys((name.replace("_", " "), name, *(a.lower() for a in self.aliases))))

    def prose(self) -> str:
        """How a sentence names this knob: its ``label``, else its name with underscores as spaces."""
        return self.label or self.name.replace("_", " ")

    def allowed(self, current: float) -> tuple[float, float]:
        """The range a decision may move to from ``current``: the hard bounds within the trust region."""
        if self.scale == "log":
            low, high = current / self.max_change, current * self.max_change
        else:
            low, high = current - self.max_change, current + self.max_change
        return max(self.low, low), min(self.high, high)

    def grid(self, current: float) -> list[float]:
        """A few choices around ``current`` (which is always one of them, exactly): one ``step`` down and
        up, rounded to 3 significant digits (a short number costs a small model fewer tokens), inside
        :meth:`allowed`."""
        low, high = self.allowed(current)
        if self.scale == "log":
            candidates = (current / self.step, current * self.step)
        else:
            candidates = (current - self.step, current + self.step)
        rounded = (float(f"{c:.3g}") for c in candidates)
        return sorted({current, *(c for c in rounded if low <= c <= high)})

    def check(self, value: float) -> float:
        """``value`` as a float if it lies within the hard bounds; ValueError naming the knob otherwise."""
        value = float(value)
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}={value} is outside its bounds [{self.low}, {self.high}]")
        return value

    def clamp(self, value: float, current: float) -> float:
        """``value`` moved into :meth:`allowed`; NaN stays at ``current``."""
        if math.isnan(value):
            return current
        low, high = self.allowed(current)
        return min(max(value, low), high)

    def direction(self, new: float, old: float) -> int:
        """+1, 0 or -1: whether ``new`` is above, at (relative 1e-9) or below ``old``."""
        if math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12):
            return 0
        return 1 if new > old else -1


# Fields of a command besides the task's knobs: no knob may take one of these names.
COMMAND_FIELDS = frozenset({"alpha", "weight_modulation", "weight_ops", "rationale", "hyperparameters"})


class TaskSpec(BaseModel):
    """What the agent knows about the task it steers (``tasks.base.Task.spec()``): its name, a plain-language
    description, the objective metric and its direction (``mode``, as Ray Tune's ``metric``/``mode``), what a
    regime's budget counts, the objective's noise band (the reflector's rule calls a smaller change
    ``neutral``) and the knobs it may set."""

    model_config = MODEL_CONFIG

    name: str
    description: str
    objective: str  # a key of EpochMetrics.metrics
    mode: Mode
    budget_unit: str = "training examples"  # what EpochMetrics.budget counts
    noise_band: float = Field(ge=0.0)  # |change in the objective| below this is noise, not an effect
    hyperparameters: list[Hyperparameter]
    summary_metrics: list[str] = Field(default_factory=list)  # shown beside the objective in result tables

    @model_validator(mode="after")
    def _distinct_knobs(self):
        names = self.knob_names()
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r} declares a hyperparameter twice: {names}")
        reserved = sorted(set(names) & COMMAND_FIELDS)
        if reserved:
            raise ValueError(f"task {self.name!r}: {reserved} are command fields, not hyperparameter names")
        return self

    def knob(self, name: str) -> Hyperparameter:
        """The declared knob ``name``; KeyError names the known ones."""
        for knob in self.hyperparameters:
            if knob.name == name:
                return knob
        raise KeyError(f"task {self.name!r} has no hyperparameter {name!r}; it has {self.knob_names()}")

    def knob_names(self) -> list[str]:
        return [k.name for k in self.hyperparameters]

    def better(self, a: float, b: float) -> bool:
        """Whether objective value ``a`` is strictly better than ``b`` under :attr:`mode`."""
        return a > b if self.mode == "max" else a < b

    def improvement(self, before: float, after: float) -> float:
        """``after - before`` signed so that positive is better (for ``min``, ``before - after``)."""
        return after - before if self.mode == "max" else before - after

"""The run specification: what one invocation of ``run.py`` does, typed, with every default in one place.

``orchestration.cli`` builds its flags' defaults from these fields and turns checked flags into a
:class:`RunSpec`; planning, the runner and the supervisor read only the spec, and ``orchestration.configs``
passes every value on to the child processes' configs, which define no defaults of their own for them.
Defaults that belong to a task (regime, epochs, batch size, knob values) come from the task's declarations
(``tasks.base.Task``). The child configs (``TrainerConfig``, ``AgentConfig``, ``LLMSettings``) define none of
their own: ``orchestration.configs`` fills them from here. No heavy import here: ``run.py --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model_server import LOCAL_MODEL_NAME
from bus.messages import ALPHA_RANGE
from trainer.config import ScheduledInstruction

# The trainer's wait for a controller that calls no model (heuristic, plateau, replay, your own): per try, s.
RULE_AGENT_TIMEOUT_S = 20.0
# Added to the model calls' worst case when the trainer waits for a model-calling controller, s.
LLM_AGENT_SLACK_S = 10.0

# The pseudo controllers of --controller, which run no agent: the baseline arm, and the A/A arm (the baseline again
# with only its training-order seed changed: the noise floor).
BASELINE_CONTROLLER, AA_CONTROLLER = "none", "aa"


def guided_controllers(controllers: list[str]) -> list[str]:
    """The names of ``controllers`` that steer a guided arm (all but the pseudo controllers ``none`` and ``aa``)."""
    return [c for c in controllers if c not in (BASELINE_CONTROLLER, AA_CONTROLLER)]


DEFAULT_REMOTE_MODEL = "gpt-4o-mini"
# How the agent calls a chat model unless told otherwise. 20 s per call: the embedded model answers in 2-8 s on 2
# cores.
LLM_TIMEOUT_S = 20.0
LLM_MAX_RETRIES = 0  # HTTP retries per call (connection errors, 5xx); the repair loop asks again anyway
LLM_TEMPERATURE = 0.2
LLM_MAX_TOKENS = 256


class ModelSpec(BaseModel):
    """How the ``llm`` controller reaches its model (``--llm*`` flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["local", "openai"] = "local"  # local: the embedded SmolLM2-135M on loopback, offline
    base_url: str | None = None  # an OpenAI-compatible endpoint; implies provider openai
    model: str | None = None  # default: LOCAL_MODEL_NAME (local) or DEFAULT_REMOTE_MODEL
    timeout_s: float = Field(default=LLM_TIMEOUT_S, gt=0)  # per model call
    max_retries: int = Field(default=LLM_MAX_RETRIES, ge=0)  # HTTP retries per call
    temperature: float = Field(default=LLM_TEMPERATURE, ge=0.0, le=2.0)
    max_tokens: int = Field(default=LLM_MAX_TOKENS, ge=16)  # the free-form answer's token cap
    response_format: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    command_space: Literal["auto", "grid", "free"] = "auto"  # auto: grid for the local model, free otherwise
    # expert: the model chooses among the expert block's candidates (agents.expert); free: the paper's form,
    # the model writes the whole command. auto: expert for the embedded model, free for an endpoint.
    decision: Literal["auto", "expert", "free"] = "auto"
    reflection: bool = True  # the model judges the previous decision (the rule otherwise)
    feed_reflection: bool = True  # the verdict goes into the next prompt
    # USD per million prompt and completion tokens (--llm-price IN,OUT); None: not set, costed at 0 (said at start
    # for an endpoint). Not part of an experiment's identity: it changes no decision.
    price_usd: tuple[float, float] | None = None
    # Per run: model calls, and their cost in USD, after which its decisions are its fallback (agents.usage).
    max_calls: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)

    @field_validator("price_usd")
    @classmethod
    def _prices_not_negative(cls, price: tuple[float, float] | None) -> tuple[float, float] | None:
        if price is not None and (min(price) < 0 or not all(math.isfinite(p) for p in price)):
            raise ValueError(f"prices must be finite and not negative, got {price=}")
        return price

    @property
    def price_or_zero(self) -> tuple[float, float]:
        """(IN, OUT) USD per million tokens; (0, 0) when no price was set."""
        return self.price_usd if self.price_usd is not None else (0.0, 0.0)

    def caps(self) -> dict[str, float]:
        """The caps that are set, by their name in an experiment's identity (``orchestration.planning``)."""
        caps = {"max_llm_calls": self.max_calls, "max_llm_cost_usd": self.max_cost_usd}
        return {name: value for name, value in caps.items() if value is not None}

    @property
    def remote(self) -> bool:
        return self.provider == "openai" or self.base_url is not None

    @property
    def model_name(self) -> str:
        return self.model or (DEFAULT_REMOTE_MODEL if self.remote else LOCAL_MODEL_NAME)

    def resolved_decision(self) -> Literal["expert", "free"]:
        if self.decision != "auto":
            return self.decision
        return "free" if self.remote else "expert"

    def resolved_command_space(self) -> Literal["grid", "free"]:
        """``grid`` or ``free``; auto is grid only for the embedded model writing free-form commands (the expert
        form's candidates carry their own values, which the grid would snap)."""
        if self.command_space != "auto":
            return self.command_space
        return "free" if self.remote or self.resolved_decision() == "expert" else "grid"


class RunSpec(BaseModel):
    """One invocation: a sweep of task × regimes × seeds × (baseline + guided controllers), or the replay or
    resume of one recorded run. ``regimes``/``epochs`` are None until the task's defaults are filled in
    (``orchestration.cli.resolve_task``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = "mnist"  # built-in name, entry point of group reflectnet.tasks, or package.module:factory
    task_options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the task's factory
    regimes: list[str] | None = None  # default: the task's default_regime
    # "none" alone: the baseline arm only; "aa" adds the A/A arm (orchestration.planning.plan_arms)
    controllers: list[str] = Field(default_factory=lambda: ["llm"])
    epochs: int | None = Field(default=None, ge=1)  # default: the task's default_epochs
    seed: int = Field(default=0, ge=0)
    seeds: int = Field(default=1, ge=1)  # seeds seed .. seed + seeds - 1
    arms: Literal["both", "baseline", "guided"] = "both"
    replay: str | None = None  # a recorded guided run to apply again with its recorded commands
    resume: str | None = None  # a failed or interrupted run to continue from its checkpoint
    rerun: bool = False  # run again what is already completed with the same settings
    db: Path = Path("runs") / "reflectnet.duckdb"
    out: Path = Path("runs")  # run directories (configs, logs, checkpoints, sockets)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pipeline: list[str] = Field(default_factory=list)  # the agent's full node list (core nodes + extras)
    # The blend ratio every arm starts with (the paper's 0.4); the agent moves it from the first decision on.
    alpha: float = Field(default=0.4, ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])
    agent_timeout_s: float | None = Field(default=None, gt=0)  # per try; None: derived, see agent_timeout()
    agent_retries: int = Field(default=1, ge=0)
    max_repairs: int = Field(default=2, ge=0)
    llm: ModelSpec = Field(default_factory=ModelSpec)
    instructions: list[ScheduledInstruction] = Field(default_factory=list)  # for the guided arms, in epoch order
    # Knob values every arm (baseline, aa, guided) starts from instead of the task's defaults (--start), checked
    # against the task's declarations by the command line; part of the experiment's identity when given.
    start: dict[str, float] = Field(default_factory=dict)
    # How a trainer waits for its controller (issue 20): "sync", the paper's protocol, trains each epoch with the
    # decision made after the previous one; "async" trains on while the decision is made and applies it at the first
    # epoch boundary after it arrives (trainer/async_decisions.py). Part of the experiment's identity when async.
    decisions: Literal["sync", "async"] = "sync"
    # Arms trained at once (issue 20): each trainer gets cores // jobs torch threads; not part of any experiment, and
    # in the synchronous protocol every arm's epochs are what --jobs 1 gives.
    jobs: int = Field(default=1, ge=1)
    # Arms as Ray tasks (issue 20, orchestration/ray_cluster.py): "auto" or a cluster address; None: local processes.
    ray: str | None = None
    ray_cpus: float = Field(default=1.0, gt=0)  # per arm
    ray_gpus: float = Field(default=0.0, ge=0)  # per arm

    def agent_timeout(self, uses_llm: bool) -> float:
        """The trainer's wait per try for a controller's agent, s: the flag, else ``RULE_AGENT_TIMEOUT_S``, else
        (a controller that calls a model) every model call one decision can make, plus slack."""
        if self.agent_timeout_s is not None:
            return self.agent_timeout_s
        if not uses_llm:
            return RULE_AGENT_TIMEOUT_S
        calls = (self.max_repairs + 1) * (self.llm.max_retries + 1) + (1 if self.llm.reflection else 0)
        return calls * self.llm.timeout_s + LLM_AGENT_SLACK_S


def default(name: str) -> Any:
    """The default of :class:`RunSpec` field ``name`` (for the command line's help)."""
    field = RunSpec.model_fields[name]
    return field.get_default(call_default_factory=True)


def model_default(name: str) -> Any:
    """The default of :class:`ModelSpec` field ``name``."""
    return ModelSpec.model_fields[name].get_default(call_default_factory=True)

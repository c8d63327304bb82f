"""The agent process's configuration, built once by run.py (it holds no secret): :class:`AgentConfig`, with the
chat model's :class:`LLMSettings`. Neither defines a default for what the run specification decides (the
controller, the model's settings, the repair budget, the pipeline): ``orchestration.configs`` passes every value
from ``orchestration.spec.RunSpec``, the one source of defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.controllers.registry import resolve_controller
from bus.messages import UpdateCommand
from bus.transport import check_endpoint

ResponseFormatMode = Literal["auto", "json_schema", "json_object", "none"]


class AgentConfig(BaseModel):
    """One agent process: where it listens, which controller answers, and how it decides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str  # REP: EpochMetrics in, Decision out
    health_endpoint: str | None = None  # REP: liveness pings, answered by a thread (bus.liveness)
    recorder_endpoint: str
    run_dir: Path
    controller: str  # a name agents.controllers resolves (built-in, entry point, module:factory)
    llm: LLMSettings | None = None  # required when controller == "llm"
    # controller "replay": run_id of the replaying run -> epoch -> the command recorded after that epoch
    replay_commands: dict[str, dict[int, UpdateCommand]] | None = None
    llm_reflection: bool  # the model judges the previous decision (rule judgement as fallback)
    feed_reflection: bool  # the verdict goes into the next prompt
    command_space: Literal["free", "grid"]  # see agents.prompts.command_schema
    nodes: list[str]  # the full ordered pipeline
    max_repairs: int = Field(ge=0)
    cache_size: int = Field(default=4096, ge=1)  # decisions kept for retried requests (not a user's setting)
    run_ids: list[str] | None = None  # the runs this agent serves; a request for another run is refused
    allow_remote: bool = False  # bind a non-loopback address (only when the user passed one explicitly)

    @field_validator("controller")
    @classmethod
    def _known_controller(cls, name: str) -> str:
        if not resolve_controller(name).needs_agent:  # an unknown name raises UnknownControllerError here
            raise ValueError(f"controller {name!r} runs no agent process")
        return name

    @model_validator(mode="after")
    def _replay_in_free_space(self):
        if self.controller == "replay" and self.command_space != "free":
            raise ValueError("controller 'replay' needs command_space 'free': the grid would snap recorded values")
        return self

    @model_validator(mode="after")
    def _loopback_unless_allowed(self):
        check_endpoint(self.endpoint, self.allow_remote)
        if self.health_endpoint is not None:
            check_endpoint(self.health_endpoint, self.allow_remote)
        return self


class LLMSettings(BaseModel):
    """How the agent reaches its chat model. Contains no secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: Literal["local", "openai"]
    base_url: str
    model: str
    timeout_s: float = Field(gt=0)  # per call, s
    max_retries: int = Field(ge=0)  # HTTP retries per call
    temperature: float = Field(ge=0.0, le=2.0)
    max_tokens: int = Field(ge=16)  # the answer's token cap
    response_format: ResponseFormatMode
    decision_form: Literal["expert", "free"]  # expert: agents.controllers.expert; free: the model writes the command
    price_prompt_usd: float = Field(ge=0.0)  # USD per million prompt tokens (--llm-price IN,OUT; 0: not priced)
    price_completion_usd: float = Field(ge=0.0)  # USD per million completion tokens
    max_calls: int | None = Field(ge=1)  # the run's model calls after which it goes on on its fallback (None: no cap)
    max_cost_usd: float | None = Field(gt=0.0)  # the same for their cost, USD


# What a model's settings recorded before a field existed meant: runs recorded before the expert form (migration 6)
# decided in the free form; runs recorded before prices and caps (migration 10) had neither.
RECORDED_LLM_DEFAULTS: dict[str, Any] = {
    "decision_form": "free", "price_prompt_usd": 0.0, "price_completion_usd": 0.0, "max_calls": None,
    "max_cost_usd": None,
}  # fmt: skip


def upgrade_recorded_agent(recorded: dict[str, Any]) -> dict[str, Any]:
    """An agent config as ``runs.config`` stored it in any ReflectNet version, in this version's form: each field of
    the model's settings it does not say takes :data:`RECORDED_LLM_DEFAULTS`'s value."""
    llm = recorded.get("llm")
    if isinstance(llm, dict):
        return {**recorded, "llm": {**RECORDED_LLM_DEFAULTS, **llm}}
    return dict(recorded)

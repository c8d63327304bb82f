"""The agent process's configuration, built once by run.py (it holds no secret)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.llm import LLMSettings
from bus.transport import check_endpoint


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str  # REP: EpochMetrics in, Decision out
    health_endpoint: str | None = None  # REP: liveness pings, answered by a thread (bus.liveness)
    recorder_endpoint: str
    run_dir: Path
    controller: Literal["heuristic", "plateau", "llm"] = "heuristic"
    llm: LLMSettings | None = None  # required when controller == "llm"
    llm_reflection: bool = True  # the model judges the previous decision (rule judgement as fallback)
    feed_reflection: bool = True  # the verdict goes into the next prompt
    command_space: Literal["free", "grid"] = "free"  # see agents.nodes.prompter.command_schema
    nodes: list[str]  # the full ordered pipeline
    max_repairs: int = Field(default=2, ge=0)
    cache_size: int = Field(default=4096, ge=1)
    run_ids: list[str] | None = None  # the runs this agent serves; a request for another run is refused
    allow_remote: bool = False  # bind a non-loopback address (only when the user passed one explicitly)

    @model_validator(mode="after")
    def _loopback_unless_allowed(self):
        check_endpoint(self.endpoint, self.allow_remote)
        if self.health_endpoint is not None:
            check_endpoint(self.health_endpoint, self.allow_remote)
        return self

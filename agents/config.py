"""The agent process's configuration, built once by run.py (it holds no secret)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.llm import LLMSettings


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str  # REP: EpochMetrics in, Decision out
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

"""The agent process's configuration, built once by run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str  # REP: EpochMetrics in, Decision out
    recorder_endpoint: str
    run_dir: Path
    controller: Literal["heuristic"] = "heuristic"
    nodes: list[str]  # the full ordered pipeline
    max_repairs: int = Field(default=2, ge=0)
    cache_size: int = Field(default=4096, ge=1)

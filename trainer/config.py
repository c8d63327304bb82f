"""The trainer process's configuration: built once by run.py, written to the run directory as JSON,
and stored in ``runs.config``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bus.messages import ALPHA_RANGE, DROPOUT_RANGE, LEARNING_RATE_RANGE, UpdateCommand
from trainer.defaults import REGIMES  # not trainer.data: no torch import for a config


class TrainerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    pair_id: str
    arm: Literal["baseline", "guided"]
    controller: str
    regime: str
    seed: int
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(default=1e-3, ge=LEARNING_RATE_RANGE[0], le=LEARNING_RATE_RANGE[1])
    dropout: float = Field(default=0.2, ge=DROPOUT_RANGE[0], le=DROPOUT_RANGE[1])
    alpha: float = Field(default=0.4, ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile_eval: bool = True  # torch.compile the validation pass (see trainer.loop.compile_for_eval)
    threads: int | None = None
    data_dir: Path
    run_dir: Path
    recorder_endpoint: str
    agent_endpoint: str | None = None  # None: the baseline arm, no agent
    agent_health_endpoint: str | None = None  # the agent's liveness pings (bus.liveness)
    agent_timeout_ms: int = Field(default=20_000, ge=1)
    agent_retries: int = Field(default=1, ge=0)
    handshake_timeout_ms: int = Field(default=60_000, ge=1)
    # Checkpoints: one file per run, rewritten after every epoch (trainer.checkpoint); None: run_dir/checkpoints.
    checkpoint_dir: Path | None = None
    # Resume: continue from this checkpoint (the run's last completed epoch) instead of epoch 1.
    resume_from: Path | None = None
    # Replay: the command applied after each epoch, as recorded; no agent is asked.
    replay_commands: dict[int, UpdateCommand] | None = None

    @property
    def checkpoint_file(self) -> Path:
        return (self.checkpoint_dir or self.run_dir / "checkpoints") / f"{self.run_id}.safetensors"

    @property
    def n_train(self) -> int:
        return REGIMES[self.regime]

"""The trainer process's configuration: built once by the orchestrator (``orchestration.configs``, from the
run specification, where every default lives), written to the run directory as JSON, and stored in
``runs.config``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bus.messages import ALPHA_RANGE, InstructionReading


class ScheduledInstruction(BaseModel):
    """An instruction given before the run: from the decision after epoch ``from_epoch`` on (1: every
    decision), ``text`` is the active instruction; ``text`` None withdraws it (``--instructions`` ``clear``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_epoch: int = Field(ge=1)
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    source: Literal["flag", "file", "schedule"] = "flag"
    reading: InstructionReading | None = None  # how the orchestrator read it before training (for the record)


class TrainerConfig(BaseModel):
    """One arm's trainer: which task (``tasks.registry``: a built-in name, an entry point or
    ``module:factory``) with which options, regime, seed and epochs; the initial knob values that
    differ from the task's defaults; and where its peers are. What the run specification decides (task,
    starting alpha, device, the agent's timeout and retries) has no default here: the orchestrator passes
    it (``orchestration.spec.RunSpec``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    pair_id: str
    arm: Literal["baseline", "guided", "aa"]  # aa: the baseline again with another order seed (the noise floor)
    controller: str
    # Whether the controller's policy reads the user's instruction (``agents.controllers.Controller``'s
    # ``reads_instructions``); False: the instruction only keeps the controller from moving against it.
    instructions_read: bool
    task: str
    task_options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the task's factory
    regime: str
    seed: int
    # What varies between repeats of one experiment (batch order, dropout masks, environment resets), passed to
    # tasks that take it (``tasks.base.setup_task``); None: the seed. The A/A arm sets another.
    order_seed: int | None = None
    epochs: int = Field(ge=1)
    hyperparameters: dict[str, float] = Field(default_factory=dict)  # initial values; the task's defaults otherwise
    alpha: float = Field(ge=ALPHA_RANGE[0], le=ALPHA_RANGE[1])  # the starting blend (RunSpec.alpha)
    device: Literal["auto", "cpu", "cuda"]
    threads: int | None = None
    run_dir: Path
    recorder_endpoint: str
    agent_endpoint: str | None = None  # None: the baseline arm, no agent
    agent_health_endpoint: str | None = None  # the agent's liveness pings (bus.liveness)
    agent_timeout_ms: int = Field(ge=1)  # per try (RunSpec.agent_timeout)
    agent_retries: int = Field(ge=0)
    handshake_timeout_ms: int = Field(default=60_000, ge=1)
    # Checkpoints: one file per run, rewritten after every epoch (trainer.checkpoint); None: run_dir/checkpoints.
    checkpoint_dir: Path | None = None
    # Resume: continue from this checkpoint (the run's last completed epoch) instead of epoch 1.
    resume_from: Path | None = None
    # The user's instructions to the agent, in epoch order (guided arms only).
    instructions: list[ScheduledInstruction] = Field(default_factory=list)
    # PULL: instructions given during the run (run.py say), pushed by the orchestrator; None: not taken.
    instruction_endpoint: str | None = None
    # The trainer's wait for its controller (RunSpec.decisions); a config recorded before it existed was "sync".
    decisions: Literal["sync", "async"] = "sync"

    @property
    def checkpoint_file(self) -> Path:
        return (self.checkpoint_dir or self.run_dir / "checkpoints") / f"{self.run_id}.safetensors"


def upgrade_recorded_config(recorded: dict[str, Any]) -> dict[str, Any]:
    """A trainer config as stored in ``runs.config`` by any ReflectNet version, in this version's form: before
    tasks (schema 1) the trainer trained MNIST with top-level ``learning_rate``/``dropout``/``batch_size``/
    ``data_dir``/``compile_eval`` and replayed with ``replay_commands``; those become task options and initial
    knob values (replay is now a controller). A config recorded before ``instructions_read`` gets what that version
    did: only the ``llm`` controller read instructions."""
    upgraded = dict(recorded)
    if "instructions_read" not in upgraded:
        upgraded["instructions_read"] = upgraded.get("controller") == "llm"
    if "task" in recorded:
        return upgraded
    upgraded = {k: v for k, v in upgraded.items() if k not in ("learning_rate", "dropout", "batch_size", "data_dir",
                                                                 "compile_eval", "replay_commands")}  # fmt: skip
    options = {k: recorded[k] for k in ("data_dir", "batch_size", "compile_eval") if k in recorded}
    knobs = {k: recorded[k] for k in ("learning_rate", "dropout") if k in recorded}
    return {**upgraded, "task": "mnist", "task_options": options, "hyperparameters": knobs}

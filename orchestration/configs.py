"""The configuration of each child process for one arm, built from the run specification and the plan: the
recorder's, an agent's, the trainer's, the model settings, and the ``RunStarted`` record of the arm."""

from __future__ import annotations

import time
from pathlib import Path

from agents.config import AgentConfig, upgrade_recorded_agent
from agents.controllers import resolve_controller
from agents.config import LLMSettings
from bus.messages import RunStarted
from bus.transport import ipc_endpoint, socket_folder, socket_name
from orchestration.planning import Arm
from orchestration.spec import RULE_AGENT_TIMEOUT_S, ModelSpec, RunSpec, guided_controllers
from storage.recorder import RecorderConfig
from tasks.registry import task_class
from trainer.config import TrainerConfig, upgrade_recorded_config


def llm_settings(spec: RunSpec) -> LLMSettings | None:
    """How the agent reaches its model; None when no guided arm uses a model-calling controller."""
    if not any(resolve_controller(c).uses_llm for c in guided_controllers(spec.controllers)):
        return None
    return model_settings(spec.llm)


def model_settings(llm: ModelSpec) -> LLMSettings:
    """The agent's settings of the model ``llm`` describes, every value from the spec."""
    return LLMSettings(
        provider="openai" if llm.remote else "local",
        base_url=llm.base_url or ("https://api.openai.com/v1" if llm.remote else "http://127.0.0.1:0/v1"),
        model=llm.model_name,
        timeout_s=llm.timeout_s,
        max_retries=llm.max_retries,
        temperature=llm.temperature,
        max_tokens=llm.max_tokens,
        response_format=llm.response_format,
        decision_form=llm.resolved_decision(),
        price_prompt_usd=llm.price_or_zero[0],
        price_completion_usd=llm.price_or_zero[1],
        max_calls=llm.max_calls,
        max_cost_usd=llm.max_cost_usd,
    )


def recorder_config(spec: RunSpec, run_dir: Path) -> RecorderConfig:
    """The recorder of this invocation: its record and control sockets are ipc paths of the run."""
    sockets = socket_folder(run_dir)
    return RecorderConfig(
        db_path=spec.db.resolve(),
        endpoint=ipc_endpoint(sockets, "recorder"),
        control_endpoint=ipc_endpoint(sockets, "recorder-control"),
        run_dir=run_dir.resolve(),
    )


def agent_config(
    spec: RunSpec, arm: Arm, todo: list[Arm], recorder: RecorderConfig, run_dir: Path, settings: LLMSettings | None
) -> AgentConfig:
    """The agent for ``arm``'s controller: it serves every run of this invocation with that controller. A replay's
    agent is the ``replay`` controller answering the recorded commands; a resumed run's keeps its settings."""
    sockets, name = socket_folder(run_dir), socket_name("agent", arm.controller)
    fresh = {
        "endpoint": ipc_endpoint(sockets, name),
        "health_endpoint": ipc_endpoint(sockets, f"{name}-health"),
        "recorder_endpoint": recorder.endpoint,
        "run_dir": run_dir.resolve(),
        "run_ids": [a.run_id for a in todo if a.controller == arm.controller],
    }
    if arm.replay_of is not None and arm.resume_from is None:
        commands = {arm.run_id: arm.recorded["commands"]}
        return AgentConfig(**fresh, **agent_settings(spec, "replay", None), replay_commands=commands)
    if arm.recorded is not None and arm.recorded.get("agent"):
        recorded = AgentConfig.model_validate(upgrade_recorded_agent(arm.recorded["agent"]))
        llm = settings if recorded.llm is not None else None
        return recorded.model_copy(update={**fresh, "llm": llm})
    return AgentConfig(**fresh, **agent_settings(spec, arm.controller, settings))


def agent_settings(spec: RunSpec, controller: str, settings: LLMSettings | None) -> dict:
    """How an agent of ``controller`` decides, every value from ``spec``: the model's settings (only for a
    controller that calls a model), the judge, the verdict in the prompt, the command space, the pipeline and
    the repair budget. The keyword arguments of :class:`AgentConfig` besides its endpoints."""
    uses_llm = resolve_controller(controller).uses_llm
    return {
        "controller": controller,
        "llm": settings if uses_llm else None,
        "llm_reflection": spec.llm.reflection,
        "feed_reflection": spec.llm.feed_reflection,
        "command_space": spec.llm.resolved_command_space() if uses_llm else "free",
        "nodes": spec.pipeline,
        "max_repairs": spec.max_repairs,
    }


def trainer_config(
    spec: RunSpec, arm: Arm, run_dir: Path, recorder: RecorderConfig, agent: AgentConfig | None
) -> TrainerConfig:
    """A new run's trainer from the spec: every arm starts from ``spec.start``'s knob values, the A/A arm with its
    order seed (``arm.order_seed``); a replayed or resumed one's from its recorded config (a resumed A/A run keeps
    its order seed). Whether the run's controller reads instructions is the registry's answer now (a replay's
    ``replay`` controller does not)."""
    where = {
        "run_dir": run_dir.resolve(),
        "recorder_endpoint": recorder.endpoint,
        "agent_endpoint": agent.endpoint if agent else None,
        "agent_health_endpoint": agent.health_endpoint if agent else None,
        "device": spec.device,
    }
    if agent is not None:
        timeout_s = spec.agent_timeout(resolve_controller(agent.controller).uses_llm)
        where["agent_timeout_ms"] = int(timeout_s * 1000)
        where["instruction_endpoint"] = ipc_endpoint(socket_folder(run_dir), socket_name("instructions", arm.run_id))
    if arm.recorded is None:
        # A baseline has no agent to wait for; its config records the wait a controller without a model gets.
        unused_wait = {} if agent is not None else {"agent_timeout_ms": int(RULE_AGENT_TIMEOUT_S * 1000)}
        return TrainerConfig(
            run_id=arm.run_id, pair_id=arm.pair_id, arm=arm.name, controller=arm.controller,
            instructions_read=resolve_controller(arm.controller).reads_instructions, task=spec.task,
            task_options=spec.task_options, regime=arm.regime, seed=arm.seed, order_seed=arm.order_seed,
            epochs=spec.epochs, hyperparameters=dict(spec.start), **where,
            **unused_wait, alpha=spec.alpha, checkpoint_dir=run_dir.resolve() / "checkpoints",
            agent_retries=spec.agent_retries, instructions=spec.instructions if arm.name == "guided" else [],
            decisions=spec.decisions,
        )  # fmt: skip
    original = TrainerConfig.model_validate(upgrade_recorded_config(arm.recorded["trainer"]))
    if arm.resume_from is not None:
        reads = resolve_controller(original.controller).reads_instructions
        return original.model_copy(update={**where, "checkpoint_dir": arm.resume_from.parent,
                                           "resume_from": arm.resume_from, "instructions_read": reads})
    return original.model_copy(
        # A replay is synchronous whatever the original was: each command applies after the epoch it was applied
        # after in the original (storage.queries.recorded_commands), which reproduces an asynchronous run exactly.
        update={**where, "run_id": arm.run_id, "controller": "replay", "resume_from": None, "decisions": "sync",
                "instructions_read": resolve_controller("replay").reads_instructions,
                "checkpoint_dir": run_dir.resolve() / "checkpoints"}
    )  # fmt: skip


def run_started(arm: Arm, trainer: TrainerConfig, agent: AgentConfig | None, settings, spec: RunSpec) -> RunStarted:
    """The ``runs`` row of a new arm: what it is, and every config (trainer, agent, the run spec) as JSON."""
    declared = task_class(trainer.task, trainer.task_options)
    task = declared.spec()
    return RunStarted(
        run_id=arm.run_id,
        pair_id=arm.pair_id,
        arm=arm.name,
        task=task.name,
        objective=task.objective,
        mode=task.mode,
        regime=arm.regime,
        budget=declared.regimes[arm.regime],
        controller=arm.controller,
        llm_model=settings.model if agent is not None and agent.llm is not None else None,
        seed=arm.seed,
        epochs=trainer.epochs,
        started_at=time.time(),
        config={
            "fingerprint": arm.fingerprint,
            # The protocol in full (task, options, regime, seed, epochs, arm, controller, agent and model settings):
            # the report pools only runs whose protocol, seed apart, is the same. None: a replay or a resume.
            "experiment": arm.experiment,
            "replay_of": arm.replay_of,
            "task": task.model_dump(mode="json"),
            "trainer": trainer.model_dump(mode="json"),
            "agent": agent.model_dump(mode="json") if agent else None,
            "spec": spec.model_dump(mode="json"),
        },
    )

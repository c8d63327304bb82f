"""Sweep planning as pure functions: which arms a run specification asks for, which recorded pair a new run joins,
what makes two runs the same experiment; and the defaults the specification owns."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.planning import TaskIdentity, experiment, fingerprint, plan_arms, training_options
from orchestration.spec import LLM_AGENT_SLACK_S, RULE_AGENT_TIMEOUT_S, ModelSpec, RunSpec
from storage.queries import PairRow
from trainer.config import TrainerConfig, upgrade_recorded_config

SPEC = RunSpec(task="mnist", regimes=["10", "100"], controllers=["none", "heuristic"], epochs=3, seed=5, seeds=2,
               pipeline=["prompter", "controller", "validator", "repairer", "reflector"])  # fmt: skip
MNIST = TaskIdentity("mnist", {"data_dir": None, "batch_size": 64, "compile_eval": True})


def test_a_sweep_plans_a_baseline_and_each_controller_per_regime_and_seed():
    arms = plan_arms(SPEC, MNIST, [], {"heuristic": False})
    assert [(a.regime, a.seed, a.name, a.controller) for a in arms] == [
        (regime, seed, name, controller)
        for regime in ("10", "100")
        for seed in (5, 6)
        for name, controller in (("baseline", "none"), ("guided", "heuristic"))
    ]
    pairs = {(a.regime, a.seed): a.pair_id for a in arms}
    assert all(a.pair_id == pairs[(a.regime, a.seed)] for a in arms) and len(set(pairs.values())) == 4
    assert len({a.fingerprint for a in arms}) == 8 and all(a.status == "pending" for a in arms)
    assert [a.run_id.split("-", 1)[1] for a in arms[:2]] == ["baseline", "heuristic"]


def test_arms_choose_baseline_or_guided_only():
    guided = plan_arms(SPEC.model_copy(update={"arms": "guided"}), MNIST, [], {"heuristic": False})
    assert {a.name for a in guided} == {"guided"} and len(guided) == 4
    baseline = plan_arms(SPEC.model_copy(update={"controllers": ["none"], "arms": "guided"}), MNIST, [], {})
    assert {a.name for a in baseline} == {"baseline"}  # --controller none: the baseline whatever --arms says


def test_a_new_run_joins_the_recorded_pair_of_the_same_task_data_and_schedule():
    recorded = [
        PairRow("mnist", "10", 5, 3, {"data_dir": "/a"}, "p-old", "p-old-baseline"),
        PairRow("diabetes", "100", 5, 3, {}, "p-diabetes", "p-diabetes-baseline"),
        PairRow("mnist", "100", 5, 7, {}, "p-other-epochs", "p-other-epochs-baseline"),
    ]
    spec = SPEC.model_copy(update={"task_options": {"batch_size": 64, "data_dir": "/elsewhere"}, "seeds": 1})
    arms = plan_arms(spec, MNIST, recorded, {"heuristic": False})
    by_regime = {a.regime: a.pair_id for a in arms}
    assert by_regime["10"] == "p-old"  # the data folder is not part of it, and 64 is the default batch size
    assert by_regime["100"] not in ("p-diabetes", "p-other-epochs")  # another task, another schedule
    assert "p-old-baseline" not in {a.run_id for a in arms}  # a run id is never reused


def test_the_fingerprint_follows_what_changes_the_experiment():
    base = experiment(SPEC, MNIST, "10", 5, "guided", "llm", uses_llm=True)
    for same_options in ({"data_dir": "/x", "compile_eval": False}, {"batch_size": 64}):  # places, speed, defaults
        same = experiment(SPEC.model_copy(update={"task_options": same_options}), MNIST, "10", 5, "guided", "llm",
                          uses_llm=True)  # fmt: skip
        assert fingerprint(base) == fingerprint(same)
    for change in ({"task": "diabetes"}, {"epochs": 4}, {"task_options": {"batch_size": 32}}, {"max_repairs": 0},
                   {"llm": ModelSpec(temperature=0.7)}, {"llm": ModelSpec(base_url="http://127.0.0.1:9/v1")}):  # fmt: skip
        other = experiment(SPEC.model_copy(update=change), MNIST, "10", 5, "guided", "llm", uses_llm=True)
        assert fingerprint(other) != fingerprint(base), change
    assert "llm_model" not in experiment(SPEC, MNIST, "10", 5, "guided", "heuristic", uses_llm=False)
    assert training_options({"batch_size": 8, "data_dir": "/d", "compile_eval": True, "x": None}) == {"batch_size": 8}


def test_a_run_recorded_before_tasks_existed_is_recognised_by_its_old_fingerprint():
    # The experiment as ReflectNet hashed it before tasks (commit e8c58c2, orchestration/planning.py).
    old = {"regime": "10", "seed": 5, "epochs": 3, "batch_size": 64, "arm": "guided", "controller": "heuristic",
           "nodes": SPEC.pipeline, "max_repairs": 2}  # fmt: skip
    [arm] = [a for a in plan_arms(SPEC, MNIST, [], {"heuristic": False}) if (a.regime, a.seed, a.name) == ("10", 5, "guided")]
    assert arm.legacy_fingerprint == fingerprint(old) != arm.fingerprint
    plateau = plan_arms(SPEC.model_copy(update={"controllers": ["plateau"], "arms": "guided"}), MNIST, [], {})
    assert all(a.legacy_fingerprint is None for a in plateau)  # it watched val_loss then, the objective now
    other_task = plan_arms(SPEC.model_copy(update={"task": "diabetes"}), TaskIdentity("diabetes", {}), [], {})
    assert all(a.legacy_fingerprint is None for a in other_task)


def test_the_specification_owns_the_agent_timeouts():
    assert RunSpec().agent_timeout(uses_llm=False) == RULE_AGENT_TIMEOUT_S == 20.0
    # 3 controller calls (1 + 2 repairs) and one judge call of 20 s each, plus slack
    assert RunSpec().agent_timeout(uses_llm=True) == 4 * 20.0 + LLM_AGENT_SLACK_S
    no_judge = RunSpec(llm=ModelSpec(reflection=False, timeout_s=5.0), max_repairs=0)
    assert no_judge.agent_timeout(uses_llm=True) == 5.0 + LLM_AGENT_SLACK_S
    assert RunSpec(agent_timeout_s=3.0).agent_timeout(uses_llm=True) == 3.0


def test_model_defaults_are_one_set_for_the_command_line_and_the_agent():
    from agents.config import LLMSettings
    from orchestration.configs import model_settings

    spec = ModelSpec()
    settings = model_settings(spec)
    assert (settings.timeout_s, settings.max_retries, settings.temperature, settings.max_tokens) == (
        spec.timeout_s, spec.max_retries, spec.temperature, spec.max_tokens)  # fmt: skip
    # the agent's settings define no default of their own for what the spec decides
    decided = {"timeout_s", "max_retries", "temperature", "max_tokens", "response_format", "decision_form"}
    assert {name for name, f in LLMSettings.model_fields.items() if f.is_required()} >= decided
    # The embedded model chooses among candidates (expert form), whose values the grid would snap: free space.
    assert spec.resolved_decision() == "expert" and spec.resolved_command_space() == "free"
    assert ModelSpec(decision="free").resolved_command_space() == "grid"
    remote = ModelSpec(provider="openai")
    assert remote.resolved_decision() == "free" and remote.resolved_command_space() == "free"
    assert settings.decision_form == "expert" and model_settings(remote).decision_form == "free"


def test_an_agent_config_decides_only_with_the_values_it_is_given():
    from agents.config import AgentConfig, upgrade_recorded_agent

    decided = {"controller", "llm_reflection", "feed_reflection", "command_space", "nodes", "max_repairs"}
    assert {name for name, f in AgentConfig.model_fields.items() if f.is_required()} >= decided
    recorded = {"llm": {"provider": "local", "base_url": "http://127.0.0.1:1/v1", "model": "m"}}  # before the expert form
    assert upgrade_recorded_agent(recorded)["llm"]["decision_form"] == "free"


def test_a_trainer_config_recorded_before_tasks_is_read_as_an_mnist_run():
    # Every version recorded its whole trainer config (model_dump), agent timeout and retries included.
    recorded = {"run_id": "r", "pair_id": "p", "arm": "guided", "controller": "llm", "regime": "1pct", "seed": 0,
                "epochs": 30, "batch_size": 64, "learning_rate": 1e-3, "dropout": 0.2, "alpha": 0.4, "device": "auto",
                "compile_eval": True, "data_dir": "/d", "run_dir": "/r", "recorder_endpoint": "tcp://127.0.0.1:1",
                "replay_commands": None, "agent_timeout_ms": 20_000, "agent_retries": 1}  # fmt: skip
    cfg = TrainerConfig.model_validate(upgrade_recorded_config(recorded))
    assert (cfg.task, cfg.task_options, cfg.hyperparameters) == (
        "mnist", {"data_dir": "/d", "batch_size": 64, "compile_eval": True}, {"learning_rate": 1e-3, "dropout": 0.2})
    with pytest.raises(ValueError):
        TrainerConfig.model_validate(recorded)  # the old form itself is not this version's


DECIDED_BY_THE_SPEC = ("task", "alpha", "device", "agent_timeout_ms", "agent_retries")


def test_the_trainer_config_takes_what_the_specification_decides_and_defines_no_default_for_it():
    assert all(TrainerConfig.model_fields[name].is_required() for name in DECIDED_BY_THE_SPEC)
    from orchestration.configs import trainer_config
    from orchestration.planning import Arm
    from storage.recorder import RecorderConfig

    spec = SPEC.model_copy(update={"alpha": 0.6, "device": "cpu", "agent_retries": 3})
    recorder = RecorderConfig(db_path="/r/x.duckdb", endpoint="ipc:///r/s/recorder", control_endpoint="ipc:///r/s/c",
                              run_dir="/r")  # fmt: skip
    baseline = Arm("baseline", "none", "10", 5, "p", "p-baseline", "f")
    cfg = trainer_config(spec, baseline, recorder.run_dir, recorder, None)
    assert (cfg.task, cfg.alpha, cfg.device, cfg.agent_retries) == ("mnist", 0.6, "cpu", 3)
    assert cfg.agent_timeout_ms == RULE_AGENT_TIMEOUT_S * 1000  # no agent: the rule controllers' wait, as recorded before
    assert RunSpec().alpha == 0.4  # the paper's starting blend


def test_the_trainer_config_says_whether_the_controller_reads_instructions_as_the_registry_does():
    from orchestration.configs import trainer_config
    from orchestration.planning import Arm
    from storage.recorder import RecorderConfig

    assert TrainerConfig.model_fields["instructions_read"].is_required()  # decided by the registry, no default here
    recorder = RecorderConfig(db_path="/r/x.duckdb", endpoint="ipc:///r/s/recorder", control_endpoint="ipc:///r/s/c",
                              run_dir="/r")  # fmt: skip
    made = {c: trainer_config(SPEC, Arm("guided", c, "10", 5, "p", f"p-{c}", "f"), recorder.run_dir, recorder, None)
            for c in ("llm", "heuristic", "plateau")}  # fmt: skip
    assert {c: cfg.instructions_read for c, cfg in made.items()} == {"llm": True, "heuristic": False, "plateau": False}
    recorded = made["llm"].model_dump(mode="json")
    replayed = Arm("guided", "llm", "10", 5, "p", "p-replay", "f", recorded={"trainer": recorded}, replay_of="p-llm")
    assert trainer_config(SPEC, replayed, recorder.run_dir, recorder, None).instructions_read is False  # replay reads none
    # A resumed run: the registry's answer now, not what was recorded.
    stale = {**made["heuristic"].model_dump(mode="json"), "instructions_read": True}
    resumed = Arm("guided", "heuristic", "10", 5, "p", "p-heuristic", "f", recorded={"trainer": stale},
                  resume_from=Path("/r/checkpoints/p-heuristic.safetensors"))  # fmt: skip
    assert trainer_config(SPEC, resumed, recorder.run_dir, recorder, None).instructions_read is False
    # A config recorded before the field: what that version did (only the llm controller read instructions).
    before = {k: v for k, v in recorded.items() if k != "instructions_read"}
    assert TrainerConfig.model_validate(upgrade_recorded_config(before)).instructions_read is True
    before["controller"] = "heuristic"
    assert TrainerConfig.model_validate(upgrade_recorded_config(before)).instructions_read is False


def test_the_aa_arm_is_the_baseline_again_with_its_own_order_seed_and_fingerprint():
    from orchestration.planning import AA_ORDER_SEED_OFFSET

    spec = SPEC.model_copy(update={"controllers": ["none", "aa", "heuristic"], "regimes": ["10"]})
    arms = plan_arms(spec, MNIST, [], {"heuristic": False})
    assert [(a.seed, a.name, a.controller) for a in arms] == [
        (seed, name, controller) for seed in (5, 6)
        for name, controller in (("baseline", "none"), ("aa", "none"), ("guided", "heuristic"))
    ]  # fmt: skip
    aa = [a for a in arms if a.name == "aa"]
    assert [a.order_seed for a in aa] == [5 + AA_ORDER_SEED_OFFSET, 6 + AA_ORDER_SEED_OFFSET] == [10_005, 10_006]
    assert all(a.order_seed is None for a in arms if a.name != "aa")
    assert all(a.run_id == f"{a.pair_id}-aa" and a.legacy_fingerprint is None for a in aa)
    baseline = next(a for a in arms if a.name == "baseline" and a.seed == 5)
    assert aa[0].experiment == {**baseline.experiment, "arm": "aa"} and aa[0].fingerprint != baseline.fingerprint
    assert {a.name for a in plan_arms(spec.model_copy(update={"arms": "baseline"}), MNIST, [], {})} == {"baseline"}
    only_aa = plan_arms(spec.model_copy(update={"controllers": ["aa"]}), MNIST, [], {})
    assert [a.name for a in only_aa] == ["baseline", "aa"] * 2  # the noise floor needs the baseline beside it


def test_a_start_is_part_of_the_experiment_and_of_the_pair_only_when_given():
    bad = SPEC.model_copy(update={"start": {"learning_rate": 1e-2, "dropout": 0.0}, "seeds": 1, "regimes": ["10"]})
    good = bad.model_copy(update={"start": {}})
    good_what, bad_what = (experiment(s, MNIST, "10", 5, "baseline", "none", False) for s in (good, bad))
    assert "start" not in good_what and bad_what == {**good_what, "start": {"learning_rate": 1e-2, "dropout": 0.0}}
    assert fingerprint(good_what) != fingerprint(bad_what)
    # A database with a good-start pair and a bad-start pair of seed 5: each new run joins its own.
    recorded = [PairRow("mnist", "10", 5, 3, {}, "p-good", "p-good-baseline"),
                PairRow("mnist", "10", 5, 3, {}, "p-bad", "p-bad-baseline", {"learning_rate": 1e-2, "dropout": 0.0})]
    assert {a.pair_id for a in plan_arms(good, MNIST, recorded, {"heuristic": False})} == {"p-good"}
    assert {a.pair_id for a in plan_arms(bad, MNIST, recorded, {"heuristic": False})} == {"p-bad"}
    assert all(a.legacy_fingerprint is None for a in plan_arms(bad, MNIST, [], {"heuristic": False}))


def test_every_arm_starts_from_the_start_and_only_the_aa_arm_gets_an_order_seed():
    from orchestration.configs import trainer_config
    from orchestration.planning import Arm
    from storage.recorder import RecorderConfig

    spec = SPEC.model_copy(update={"start": {"learning_rate": 1e-2}, "controllers": ["none", "aa", "heuristic"]})
    recorder = RecorderConfig(db_path="/r/x.duckdb", endpoint="ipc:///r/s/recorder", control_endpoint="ipc:///r/s/c",
                              run_dir="/r")  # fmt: skip
    arms = plan_arms(spec, MNIST, [], {"heuristic": False})[:3]
    made = {a.name: trainer_config(spec, a, recorder.run_dir, recorder, None) for a in arms}
    assert {name: cfg.hyperparameters for name, cfg in made.items()} == {
        name: {"learning_rate": 1e-2} for name in ("baseline", "aa", "guided")}  # fmt: skip
    assert {name: cfg.order_seed for name, cfg in made.items()} == {"baseline": None, "aa": 10_005, "guided": None}
    assert made["aa"].arm == "aa" and made["aa"].controller == "none"
    # A resumed A/A run keeps its order seed: it is in the recorded config.
    resumed = Arm("aa", "none", "10", 5, arms[1].pair_id, arms[1].run_id, "f",
                  recorded={"trainer": made["aa"].model_dump(mode="json")},
                  resume_from=Path("/r/checkpoints/x.safetensors"))  # fmt: skip
    assert trainer_config(spec, resumed, recorder.run_dir, recorder, None).order_seed == 10_005

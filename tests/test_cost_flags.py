"""--llm-price, --max-llm-calls, --max-llm-cost: parsed into the ModelSpec, passed to the agent's LLMSettings, bad
values a one-line error (exit 2), caps in the experiment's identity only when set."""

from __future__ import annotations

import pytest

from orchestration.cli import build_parser, cost_notice, model_spec
from orchestration.commands.train import main as train_main
from orchestration.configs import model_settings
from orchestration.planning import TaskIdentity, experiment, fingerprint
from orchestration.spec import ModelSpec, RunSpec

MNIST = TaskIdentity("mnist", {"batch_size": 64})
SPEC = RunSpec(epochs=3, regimes=["10"])


def parsed(*argv: str) -> ModelSpec:
    return model_spec(build_parser().parse_args(list(argv)))


def test_the_price_and_caps_reach_the_agents_settings():
    spec = parsed("--llm-price", "0.15, 0.6", "--max-llm-calls", "3", "--max-llm-cost", "0.5")
    assert (spec.price_usd, spec.max_calls, spec.max_cost_usd) == ((0.15, 0.6), 3, 0.5)
    settings = model_settings(spec)
    assert (settings.price_prompt_usd, settings.price_completion_usd) == (0.15, 0.6)
    assert (settings.max_calls, settings.max_cost_usd) == (3, 0.5)
    default = model_settings(parsed())
    assert (default.price_prompt_usd, default.price_completion_usd, default.max_calls, default.max_cost_usd) == (
        0.0, 0.0, None, None)  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--llm-price", "0.15"], "argument --llm-price: must be IN,OUT (USD per million prompt, completion tokens)"),
        (["--llm-price", "a,1"], "argument --llm-price: IN,OUT: each must be a number, got 'a'"),
        (["--llm-price", "1,-2"], "argument --llm-price: IN,OUT: each must be at least 0, got -2.0"),
        (["--max-llm-calls", "0"], "argument --max-llm-calls: must be at least 1, got 0"),
        (["--max-llm-calls", "2.5"], "argument --max-llm-calls: must be a whole number, got '2.5'"),
        (["--max-llm-cost", "-1"], "argument --max-llm-cost: must be above 0, got -1.0"),
        (["--max-llm-cost", "1"], "--max-llm-cost 1 needs a --llm-price above 0,0"),
        (["--max-llm-cost", "1", "--llm-price", "0,0"], "--max-llm-cost 1 needs a --llm-price above 0,0"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert train_main([*argv, "--db", str(tmp_path / "x.duckdb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"run.py: error: {message}") and len(err.strip().splitlines()) == 1, err


def test_caps_are_part_of_the_experiment_and_the_price_is_not():
    base = experiment(SPEC, MNIST, "10", 0, "guided", "llm", uses_llm=True)
    assert "max_llm_calls" not in base and "max_llm_cost_usd" not in base  # runs recorded before caps keep theirs
    priced = SPEC.model_copy(update={"llm": ModelSpec(price_usd=(1.0, 2.0))})
    assert fingerprint(experiment(priced, MNIST, "10", 0, "guided", "llm", uses_llm=True)) == fingerprint(base)
    capped = SPEC.model_copy(update={"llm": ModelSpec(max_calls=3)})
    what = experiment(capped, MNIST, "10", 0, "guided", "llm", uses_llm=True)
    assert what["max_llm_calls"] == 3 and fingerprint(what) != fingerprint(base)
    assert "max_llm_calls" not in experiment(capped, MNIST, "10", 0, "guided", "heuristic", uses_llm=False)


def test_an_endpoint_without_a_price_is_said_once_the_embedded_model_is_not():
    remote = RunSpec(llm=ModelSpec(base_url="http://127.0.0.1:9/v1", model="m"))
    said = "no --llm-price for m: its calls and tokens are recorded, their cost as 0 USD (run_costs)"
    assert cost_notice(remote) == said
    assert cost_notice(RunSpec()) is None
    assert cost_notice(remote.model_copy(update={"llm": ModelSpec(base_url="http://x/v1", price_usd=(1, 1))})) is None
    assert cost_notice(remote.model_copy(update={"controllers": ["heuristic"]})) is None


def test_a_model_recorded_before_prices_and_caps_had_neither():
    from agents.config import LLMSettings, upgrade_recorded_agent

    recorded = model_settings(ModelSpec()).model_dump(exclude={"price_prompt_usd", "price_completion_usd",
                                                               "max_calls", "max_cost_usd"})  # fmt: skip
    settings = LLMSettings.model_validate(upgrade_recorded_agent({"llm": recorded})["llm"])
    assert (settings.price_prompt_usd, settings.price_completion_usd, settings.max_calls, settings.max_cost_usd) == (
        0.0, 0.0, None, None)  # fmt: skip

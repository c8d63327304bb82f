"""bench.guidance: the rates overall and per language, the --json figures and the --per-case lines, computed on
hand-made outcomes and through main() with a scripted decision; then the real benchmark with the embedded model
on a three-case file, as a user runs it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.guidance import Outcome, figures_by_language, judge_case, main, summary, without_nan
from bench.guidance_cases import Case, case_metrics
from bus.messages import Decision, UpdateCommand

REPO = Path(__file__).resolve().parents[2]
RATES = {"cases", "explicit_followed", "explicit_contradicted", "goal_followed", "goal_contradicted", "hold_held",
         "not_understood"}  # fmt: skip
LR = "learning_rate"


def outcome(kind, followed, contradicted=False, held=False, understood=True, lang="en", hold=False, latency=1.0):
    case = Case(kind, "steady", None if understood is None else "some words", want=((LR, -1),), hold=hold, lang=lang)
    return Outcome(case, followed, contradicted, held, latency, "r", understood=understood)


def test_rates_per_language_and_overall_are_the_shares_of_their_cases():
    outcomes = [
        outcome("explicit", True, lang="en"),
        outcome("explicit", False, contradicted=True, lang="en", understood=False),
        outcome("explicit", True, held=True, hold=True, lang="en"),
        outcome("goal", True, lang="en"),
        outcome("evidence", True, lang="en", understood=None),
        outcome("explicit", False, lang="es", understood=False),
        outcome("explicit", False, contradicted=True, lang="es"),
        outcome("goal", False, held=False, hold=True, lang="es", understood=False),
        outcome("goal", False, contradicted=True, lang="es"),
    ]
    figures = figures_by_language(outcomes)
    assert list(figures["languages"]) == ["en", "es"]
    en, es, every = figures["languages"]["en"], figures["languages"]["es"], figures["all"]
    assert set(en) == set(es) == RATES and RATES < set(every)
    assert en == {"cases": 5, "explicit_followed": 2 / 3, "explicit_contradicted": 1 / 3, "goal_followed": 1.0,
                  "goal_contradicted": 0.0, "hold_held": 1.0, "not_understood": 1 / 4}  # fmt: skip
    assert es == {"cases": 4, "explicit_followed": 0.0, "explicit_contradicted": 0.5, "goal_followed": 0.0,
                  "goal_contradicted": 0.5, "hold_held": 0.0, "not_understood": 2 / 4}  # fmt: skip
    assert {k: every[k] for k in RATES} == {
        "cases": 9, "explicit_followed": 2 / 5, "explicit_contradicted": 2 / 5, "goal_followed": 1 / 3,
        "goal_contradicted": 1 / 3, "hold_held": 1 / 2, "not_understood": 3 / 8,
    }  # fmt: skip
    # the figures that are not per language stay in "all"
    assert every["evidence_agreement"] == 1.0 and math.isnan(every["steady_hold"]) and every["latency_p50_s"] == 1.0


def test_an_empty_category_is_null_in_json_never_nan():
    # one case: no goal-like case, no hold asked, one latency (its own 95th percentile)
    figures = figures_by_language([outcome("explicit", True, lang="de", latency=0.5)])
    text = json.dumps(without_nan(figures), allow_nan=False)
    written = json.loads(text)
    assert set(written) == {"all", "languages"} and set(written["languages"]) == {"de"}
    assert written["languages"]["de"] == {"cases": 1, "explicit_followed": 1.0, "explicit_contradicted": 0.0,
                                          "goal_followed": None, "goal_contradicted": None, "hold_held": None,
                                          "not_understood": 0.0}  # fmt: skip
    assert written["all"]["latency_p95_s"] == 0.5 and written["all"]["evidence_agreement"] is None


def test_the_evidence_cases_that_should_hold_are_not_no_change_phrasings():
    figures = summary([outcome("evidence", False, hold=True, understood=None), outcome("explicit", True, hold=True, held=True)])
    assert figures["hold_held"] == 1.0 and figures["steady_hold"] == 0.0 and figures["not_understood"] == 0.0


def halve_the_learning_rate(graph, policy_name, m, max_repairs, command_space="free"):
    """A scripted decision in place of the agent graph: the learning rate halved, whatever was asked."""
    values = {**m.hyperparameters, LR: m.hyperparameters[LR] / 2}
    command = UpdateCommand(hyperparameters=values, alpha=m.alpha, rationale="We should halve it, because.")
    return Decision(run_id=m.run_id, epoch=m.epoch, controller=policy_name, command=command, choice="learning_rate:down")


def test_main_covers_exactly_the_file_s_cases_and_writes_the_figures_and_each_case(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("agents.service.decide", halve_the_learning_rate)
    lines = [
        {"kind": "explicit", "task": "mnist", "state": "plateau", "instruction": "halve the learning rate",
         "want": [[LR, -1]], "against": [[LR, 1]], "family": "plain", "id": "en-1"},
        {"kind": "explicit", "task": "diabetes", "state": "steady", "instruction": "change nothing", "hold": True},
        {"kind": "explicit", "task": "cartpole", "state": "diverging", "instruction": "xyzzy plugh frobnicate",
         "want": [[LR, -1]], "lang": "es"},
        {"kind": "evidence", "task": "mnist", "state": "plateau", "instruction": None, "want": [[LR, -1]]},
    ]  # fmt: skip
    cases = tmp_path / "cases.jsonl"
    cases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    figures, each = tmp_path / "figures.json", tmp_path / "each.jsonl"
    # an endpoint that is never called: no model server starts, the scripted decision stands in for the graph
    status = main(["--cases", str(cases), "--json", str(figures), "--per-case", str(each),
                   "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m"])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert out.startswith(f"4 cases from {cases}, model m") and out.count("learning_rate:down") == 4
    written = json.loads(figures.read_text())
    assert written["all"]["cases"] == 4 and set(written["languages"]) == {"en", "es"}
    assert written["languages"]["en"] == {"cases": 3, "explicit_followed": 0.5, "explicit_contradicted": 0.5,
                                          "goal_followed": None, "goal_contradicted": None, "hold_held": 0.0,
                                          "not_understood": 0.0}  # fmt: skip
    assert written["languages"]["es"]["not_understood"] == 1.0 and written["all"]["not_understood"] == 1 / 3
    assert written["all"]["evidence_agreement"] == 1.0
    records = [json.loads(line) for line in each.read_text().splitlines()]
    assert [r["case"]["instruction"] for r in records] == [line["instruction"] for line in lines]
    first, hold, unread, evidence = records
    assert first["case"]["id"] == "en-1" and first["case"]["family"] == "plain"
    assert (first["followed"], first["contradicted"], first["held"], first["understood"]) == (True, False, False, True)
    assert first["said_back"] == "read as: learning_rate × 0.5 at the next decision, then kept"
    assert first["choice"] == "learning_rate:down" and first["moved"] == {"dropout": 0, LR: -1, "alpha": 0}
    assert (hold["followed"], hold["contradicted"], hold["held"]) == (False, True, False)
    assert unread["understood"] is False and unread["said_back"].startswith("not understood:")
    assert evidence["understood"] is None and evidence["said_back"] is None and evidence["followed"] is True


def test_judging_is_unchanged_by_the_moves_being_recorded():
    m = case_metrics(Case("explicit", "steady", "raise dropout and halve the lr"), 0)
    decision = halve_the_learning_rate(None, "llm", m, 2)
    both = Case("explicit", "steady", "x", want=((LR, -1), ("dropout", 1)), all_of=True)
    assert judge_case(both, m, decision) == (False, False, False)
    assert judge_case(Case("explicit", "steady", "x", want=((LR, -1),)), m, decision) == (True, False, False)
    assert judge_case(Case("explicit", "steady", "x", hold=True), m, decision) == (False, True, False)


@pytest.mark.e2e
@pytest.mark.slow  # a benchmark run (about a minute): run with -m slow; the unit tests above cover its interface
def test_the_benchmark_runs_a_cases_file_with_the_embedded_model(tmp_path):
    lines = [
        {"kind": "explicit", "task": "mnist", "state": "plateau", "instruction": "halve the learning rate",
         "want": [[LR, -1]], "against": [[LR, 1]]},
        {"kind": "explicit", "task": "diabetes", "state": "steady", "instruction": "change nothing", "hold": True,
         "lang": "en"},
        {"kind": "evidence", "task": "cartpole", "state": "steady", "instruction": None, "hold": True, "lang": "xx"},
    ]  # fmt: skip
    cases, figures, each = tmp_path / "cases.jsonl", tmp_path / "figures.json", tmp_path / "each.jsonl"
    cases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = subprocess.run([sys.executable, "-m", "bench.guidance", "--cases", str(cases), "--json", str(figures),
                             "--per-case", str(each)], cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"3 cases from {cases}") and "language  cases" in result.stdout
    written = json.loads(figures.read_text())
    assert written["all"]["cases"] == 3 and set(written["languages"]) == {"en", "xx"}
    assert written["languages"]["en"]["cases"] == 2 and written["languages"]["xx"]["cases"] == 1
    for figures_of in (written["all"], *written["languages"].values()):
        assert RATES <= set(figures_of)
        assert all(v is None or 0.0 <= v <= 1.0 for k, v in figures_of.items() if k in RATES - {"cases"})
    assert written["all"]["not_understood"] == 0.0  # both instructions are the reader's own plain wording
    assert {"evidence_agreement", "steady_hold", "latency_p50_s", "latency_p95_s"} <= set(written["all"])
    records = [json.loads(line) for line in each.read_text().splitlines()]
    assert len(records) == 3 and records[0]["said_back"].startswith("read as:") and records[2]["understood"] is None
    assert all(isinstance(r["followed"], bool) and r["latency_s"] > 0 for r in records)

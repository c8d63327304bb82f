"""Does the agent follow instructions and act on evidence? ``python -m bench.guidance``.

    python -m bench.guidance                         # the embedded model, the CLI's default settings
    python -m bench.guidance --llm-decision free     # the paper's free form, for comparison
    python -m bench.guidance --llm-base-url URL --llm-model NAME   # any OpenAI-compatible endpoint
    python -m bench.guidance --cases held_back.jsonl --json figures.json --per-case cases.jsonl

Runs the real agent graph (prompter -> controller -> validator -> repairer -> reflector, built as the agent
process builds it) on a battery of (training state, instruction, expected effect) cases and prints the share
of explicit instructions followed and contradicted, of goal-like instructions followed, the agreement with
unambiguous evidence when there is no instruction, the hold rates, and the decision latency; then the rates per
language with the share of instructions the reader did not understand (and so did not act on).

``--cases FILE`` runs the cases of a JSON-lines file instead of the built-in ones (the form is in
:mod:`bench.guidance_cases`); ``--json OUT`` writes the figures as ``{"all": {...}, "languages": {"en": {...}}}``
(shares in [0, 1], null where a category has no case); ``--per-case OUT`` writes one JSON line per case with the
outcome, the moves made, the decision's choice and the reading said back, to study what went wrong.

A case's expected effect is written here, independently of the expert block's lexicon: ``want`` lists moves
(knob, direction) of which at least one must happen (all of them with ``all_of``), ``hold`` asks for no change
at all, ``against`` lists moves that contradict. Targets (issue 10): explicit >= 90 % followed and none
contradicted, goal-like >= 70 %, evidence >= 80 % agreement and >= 80 % holds on steady gains.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.guidance_cases import CASES, STATES, Case, CaseFileError, case_metrics, case_record, load_cases, task_spec
from bus.messages import EpochMetrics

__all__ = ["CASES", "STATES", "Case", "Outcome", "case_metrics", "judge_case", "main", "run_cases", "summary",
           "task_spec"]  # fmt: skip
TARGETS = {"explicit": 0.90, "goal": 0.70, "evidence": 0.80, "steady_hold": 0.80}


@dataclass
class Outcome:
    """What the agent did with one case: judged ``followed`` / ``contradicted`` / ``held`` (:func:`judge_case`), the
    knobs it ``moved`` ({knob or "alpha": -1, 0 or 1}), and whether the reader ``understood`` the instruction (None
    without one) with the line it ``said_back``."""

    case: Case
    followed: bool
    contradicted: bool
    held: bool
    latency_s: float
    rationale: str
    choice: str | None = None
    margin: float | None = None
    candidates: int = 1
    copied: bool = False
    invented_numbers: bool = False
    fallback: bool = False
    notes: list = field(default_factory=list)
    understood: bool | None = None
    said_back: str | None = None
    moved: dict[str, int] = field(default_factory=dict)


def moved_directions(m: EpochMetrics, decision) -> dict[str, int]:
    """Which way the decision moved each knob of ``m`` and the blend weight ``alpha``: -1, 0 (kept) or 1."""
    command, before = decision.command, m.hyperparameters
    moved = {name: m.task.knob(name).direction(command.hyperparameters[name], before[name]) for name in before}
    moved["alpha"] = (command.alpha > m.alpha) - (command.alpha < m.alpha)
    return moved


def judge_case(case: Case, m: EpochMetrics, decision) -> tuple[bool, bool, bool]:
    """(followed, contradicted, held) of a decision against the case's expectation."""
    command, moved = decision.command, moved_directions(m, decision)
    held = not any(moved.values()) and not command.modulated_layers()
    hits = [moved.get(name, 0) == d for name, d in case.want]
    contradicted = any(moved.get(name, 0) == d for name, d in case.against)
    if case.hold:
        followed = held
        contradicted = not held
    elif case.weights:
        followed = bool(command.modulated_layers())
    else:
        followed = (all(hits) if case.all_of else any(hits)) and not contradicted
    return followed, contradicted, held


def run_cases(graph, policy_name: str, command_space: str, verbose: bool = False,
              cases: tuple[Case, ...] = CASES) -> list[Outcome]:  # fmt: skip
    """Each of ``cases`` decided by ``graph`` as the agent decides an epoch, judged, with one progress line each."""
    from agents.expert.reading import read
    from agents.service import decide
    from agents.trends import weight_layers

    outcomes = []
    for i, case in enumerate(cases):
        m = case_metrics(case, i)
        # read as the expert block reads it (agents.expert.candidates), the layers included
        reading = read(case.instruction, m.task, weight_layers(m)) if case.instruction is not None else None
        started = time.perf_counter()
        decision = decide(graph, policy_name, m, max_repairs=2, command_space=command_space)
        latency = time.perf_counter() - started
        followed, contradicted, held = judge_case(case, m, decision)
        # the recorded plan: how many candidates there were, and the rationale's flags
        note = next((n for n in decision.notes if n.get("action") == "expert_choice"), {})
        outcomes.append(Outcome(case, followed, contradicted, held, latency, decision.command.rationale,
                                decision.choice, decision.choice_margin, len(note.get("candidates", [])) or 1,
                                bool(note.get("rationale_copied")), bool(note.get("rationale_unsupported_numbers")),
                                decision.fallback, decision.notes, reading and reading.understood,
                                reading and reading.said_back(m.task), moved_directions(m, decision)))  # fmt: skip
        mark = ("ok " if followed else "NO ") + ("?" if reading and not reading.understood else " ")
        print(f"  {mark} {case.kind:<8} {case.lang:<3} {case.task:<8} {case.state:<11} "
              f"{str(case.instruction)[:46]!r:<48} {latency:5.2f}s {decision.choice or '-'}", flush=True)  # fmt: skip
        if verbose:
            print(f"      {decision.command.rationale}")
    return outcomes


def share(values: list[bool]) -> float:
    """The share of true ``values``, in [0, 1]; NaN when there are none."""
    return sum(values) / len(values) if values else math.nan


def rates(outcomes: list[Outcome]) -> dict[str, float]:
    """The rates reported for every language: shares in [0, 1] (NaN for a category without cases) and ``cases``.
    ``hold_held`` counts the instructions that ask for no change (``hold`` with an instruction; the evidence
    cases that should hold are ``steady_hold``); ``not_understood`` the instructions the reader did not
    understand."""
    by = {kind: [o for o in outcomes if o.case.kind == kind] for kind in ("explicit", "goal")}
    instructed = [o for o in outcomes if o.case.instruction is not None]
    return {
        "cases": len(outcomes),
        "explicit_followed": share([o.followed for o in by["explicit"]]),
        "explicit_contradicted": share([o.contradicted for o in by["explicit"]]),
        "goal_followed": share([o.followed for o in by["goal"]]),
        "goal_contradicted": share([o.contradicted for o in by["goal"]]),
        "hold_held": share([o.held for o in instructed if o.case.hold]),
        "not_understood": share([not o.understood for o in instructed]),
    }


def languages(outcomes: list[Outcome]) -> dict[str, dict[str, float]]:
    """:func:`rates` per ``Case.lang``, languages in alphabetical order."""
    return {lang: rates([o for o in outcomes if o.case.lang == lang]) for lang in sorted({o.case.lang for o in outcomes})}


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    """:func:`rates` over all ``outcomes``, plus agreement with the evidence, the hold rates, latency (seconds) and
    how often the model had a real choice."""
    evidence = [o for o in outcomes if o.case.kind == "evidence"]
    steady = [o for o in evidence if o.case.hold]
    latencies = sorted(o.latency_s for o in outcomes)
    choices = [o for o in outcomes if o.candidates > 1]
    return {
        **rates(outcomes),
        "evidence_agreement": share([o.followed for o in evidence if not o.case.hold]),
        "steady_hold": share([o.held for o in steady]),
        "hold_rate": share([o.held for o in outcomes]),
        "latency_p50_s": statistics.median(latencies) if latencies else math.nan,
        # quantiles() needs two points; one latency is its own 95th percentile
        "latency_p95_s": statistics.quantiles(latencies, n=20, method="inclusive")[-1] if len(latencies) > 1
        else latencies[0] if latencies else math.nan,
        "model_choices": len(choices),
        "median_margin": statistics.median([o.margin for o in choices if o.margin is not None]) if choices else math.nan,
        "copied_rationales": sum(o.copied for o in outcomes),
        "invented_numbers": sum(o.invented_numbers for o in outcomes),
        "fallbacks": sum(o.fallback for o in outcomes),
    }


def pct(x: float) -> str:
    """A share as a percentage for the terminal; a dash for a category without cases."""
    return "    —  " if math.isnan(x) else f"{100 * x:5.1f} %"


def print_summary(f: dict[str, float], form: str) -> None:
    """The figures of :func:`summary` as the terminal shows them, each with its target where the issue sets one."""
    rows = [
        (f"explicit instructions followed (target >= {TARGETS['explicit']:.0%})", pct(f["explicit_followed"])),
        ("explicit instructions contradicted (target 0)", pct(f["explicit_contradicted"])),
        (f"goal-like instructions followed (target >= {TARGETS['goal']:.0%})", pct(f["goal_followed"])),
        ("goal-like instructions contradicted", pct(f["goal_contradicted"])),
        ("instructions asking for no change: held", pct(f["hold_held"])),
        ("instructions not understood (not acted on)", pct(f["not_understood"])),
        (f"no instruction: agrees with the evidence (target >= {TARGETS['evidence']:.0%})", pct(f["evidence_agreement"])),
        (f"no instruction: holds on steady gains (target >= {TARGETS['steady_hold']:.0%})", pct(f["steady_hold"])),
        ("hold rate, all cases", pct(f["hold_rate"])),
        ("decision latency p50 / p95", f"{f['latency_p50_s']:.2f} / {f['latency_p95_s']:.2f} s"),
        ("cases where the model chose among candidates", f"{f['model_choices']} (median margin {f['median_margin']:.2f})"),
        ("rationales copied from the prompt / citing a number not in it", f"{f['copied_rationales']} / {f['invented_numbers']}"),
        ("fallbacks", f"{f['fallbacks']}"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"\nReflectNet guidance benchmark: {f['cases']} cases, decision form {form}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def print_languages(figures: dict) -> None:
    """The rates per language of :func:`figures_by_language`, one row each and one for all."""
    print("\n  language  cases  explicit followed / contradicted  goal followed / contradicted  hold held  not understood")
    for lang, r in [*figures["languages"].items(), ("all", figures["all"])]:
        print(f"  {lang:<8}  {r['cases']:>5}  {pct(r['explicit_followed']):>17} / {pct(r['explicit_contradicted']):<12}"
              f"  {pct(r['goal_followed']):>13} / {pct(r['goal_contradicted']):<12}  {pct(r['hold_held']):>9}"
              f"  {pct(r['not_understood']):>14}")  # fmt: skip


def figures_by_language(outcomes: list[Outcome]) -> dict:
    """``{"all": summary(outcomes), "languages": {lang: rates, ...}}``, the figures ``--json`` writes."""
    return {"all": summary(outcomes), "languages": languages(outcomes)}


def without_nan(value):
    """``value`` with every NaN replaced by None (JSON null): a share of an empty category is not a number."""
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def per_case_record(o: Outcome) -> dict:
    """One line of ``--per-case``: the case in the cases file's form and what became of it."""
    return {"case": case_record(o.case), "followed": o.followed, "contradicted": o.contradicted, "held": o.held,
            "understood": o.understood, "said_back": o.said_back, "choice": o.choice, "moved": o.moved,
            "rationale": o.rationale, "latency_s": round(o.latency_s, 3), "fallback": o.fallback}  # fmt: skip


def unwritable(path: Path | None) -> str | None:
    """Why ``path`` cannot be written to (checked before a long run), or None when it can."""
    if path is not None and not path.parent.is_dir():
        return f"{path}: no such folder {path.parent}"
    if path is not None and path.is_dir():
        return f"{path} is a folder; give a file name"
    return None


def main(argv: list[str] | None = None) -> int:
    """The benchmark's command line; returns the exit status: 0, or 2 for a bad cases file or output path."""
    from agents.config import AgentConfig
    from agents.graph import build_agent_graph, pipeline_with
    from agents.service import make_policy_and_judge
    from orchestration.cli import CliError, add_llm_flags, model_spec
    from orchestration.configs import agent_settings, llm_settings
    from orchestration.spec import RunSpec

    parser = argparse.ArgumentParser(prog="python -m bench.guidance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="print each decision's rationale")
    parser.add_argument("--cases", type=Path, metavar="FILE",
                        help="run the cases of this JSON-lines file instead of the built-in ones")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures, overall and per language, here")
    parser.add_argument("--per-case", type=Path, metavar="OUT", help="write one JSON line per case's outcome here")
    add_llm_flags(parser)
    args = parser.parse_args(argv)
    try:
        spec = RunSpec(controllers=["llm"], llm=model_spec(args), pipeline=pipeline_with([]))
    except CliError as exc:
        parser.error(str(exc))
    try:
        cases = load_cases(args.cases) if args.cases is not None else CASES
    except CaseFileError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    for problem in filter(None, (unwritable(args.json), unwritable(args.per_case))):
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    server = None
    with tempfile.TemporaryDirectory(prefix="reflectnet-guidance-") as tmp:
        settings = llm_settings(spec)
        try:
            if not spec.llm.remote:
                from model_server.manager import LocalLLMServer

                server = LocalLLMServer(Path(tmp) / "llm-server.log")
                server.start()
                server.wait_ready()
                settings = settings.model_copy(update={"base_url": server.base_url})
            cfg = AgentConfig(endpoint="ipc:///unused", recorder_endpoint="ipc:///unused", run_dir=Path(tmp),
                              **agent_settings(spec, "llm", settings))  # fmt: skip
            policy, judge = make_policy_and_judge(cfg)
            graph = build_agent_graph(cfg.nodes, policy, judge)
            print(f"{len(cases)} cases{f' from {args.cases}' if args.cases else ''}, model {settings.model} at "
                  f"{settings.base_url}, decision form {settings.decision_form}")  # fmt: skip
            outcomes = run_cases(graph, policy.name, cfg.command_space, args.verbose, cases)
        finally:
            if server is not None:
                server.stop()
    figures = figures_by_language(outcomes)
    print_summary(figures["all"], settings.decision_form)
    f = figures["all"]
    met = (f["explicit_followed"] >= TARGETS["explicit"] and f["explicit_contradicted"] == 0
           and f["goal_followed"] >= TARGETS["goal"] and f["evidence_agreement"] >= TARGETS["evidence"]
           and f["steady_hold"] >= TARGETS["steady_hold"])  # fmt: skip
    print(f"  targets {'met' if met else 'NOT met'}")
    print_languages(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(without_nan(figures), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if args.per_case is not None:
        lines = (json.dumps(without_nan(per_case_record(o)), ensure_ascii=False, allow_nan=False) for o in outcomes)
        args.per_case.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

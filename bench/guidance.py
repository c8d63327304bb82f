"""Does the agent follow instructions and act on evidence? ``python -m bench.guidance``.

    python -m bench.guidance                         # the embedded model, the CLI's default settings
    python -m bench.guidance --llm-decision free     # the paper's free form, for comparison
    python -m bench.guidance --llm-base-url URL --llm-model NAME   # any OpenAI-compatible endpoint

Runs the real agent graph (prompter -> controller -> validator -> repairer -> reflector, built as the agent
process builds it) on a battery of (training state, instruction, expected effect) cases and prints the share
of explicit instructions followed and contradicted, of goal-like instructions followed, the agreement with
unambiguous evidence when there is no instruction, the hold rates, and the decision latency.

A case's expected effect is written here, independently of the expert block's lexicon: ``want`` lists moves
(knob, direction) of which at least one must happen (all of them with ``all_of``), ``hold`` asks for no change
at all, ``against`` lists moves that contradict. Targets (issue 10): explicit >= 90 % followed and none
contradicted, goal-like >= 70 %, evidence >= 80 % agreement and >= 80 % holds on steady gains.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bus.messages import EpochMetrics, EpochSummary, Instruction, TaskSpec

TARGETS = {"explicit": 0.90, "goal": 0.70, "evidence": 0.80, "steady_hold": 0.80}


@dataclass(frozen=True)
class Case:
    """One benchmark case: a ``state`` name (:data:`STATES`), an instruction (None: evidence only), what to
    expect, and the kind of case it counts for."""

    kind: str  # explicit | goal | evidence
    state: str
    instruction: str | None
    want: tuple[tuple[str, int], ...] = ()
    against: tuple[tuple[str, int], ...] = ()
    hold: bool = False
    all_of: bool = False
    weights: bool = False  # a weight modulation must be applied
    task: str = "mnist"


LR, DROP, WD, ENT, CLIP = "learning_rate", "dropout", "weight_decay", "ent_coef", "clip_range"
DOWN, UP = -1, 1

CASES: tuple[Case, ...] = (
    # explicit instructions, several wordings and states
    Case("explicit", "steady", "halve the learning rate", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "plateau", "Please double the learning rate.", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "overfitting", "raise dropout by 0.1", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "lower the dropout a bit", want=((DROP, DOWN),), against=((DROP, UP),)),
    Case("explicit", "plateau", "change nothing", hold=True),
    Case("explicit", "overfitting", "Don't touch anything this epoch.", hold=True),
    Case("explicit", "steady", "shrink the last layer's weights a little", weights=True),
    Case("explicit", "steady", "add a little noise to the weights of the first layer", weights=True),
    Case("explicit", "unclear", "increase the step size", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "unclear", "reduce the lr by a factor of 3", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "steady", "set dropout to 0.35", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "set the learning rate to 10", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "plateau", "cut the learning rate and raise dropout", want=((LR, DOWN), (DROP, UP)), all_of=True,
         against=((LR, UP), (DROP, DOWN))),
    Case("explicit", "diverging", "keep the learning rate as it is but lower dropout", want=((DROP, DOWN),),
         against=((LR, UP), (LR, DOWN), (DROP, UP))),
    Case("explicit", "steady", "make the step size smaller at every single decision", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "plateau", "turn dropout down to zero", want=((DROP, DOWN),), against=((DROP, UP),)),
    Case("explicit", "steady", "raise the learning rate by 50%", want=((LR, UP),), against=((LR, DOWN),)),
    Case("explicit", "steady", "leave everything as it is", hold=True),
    Case("explicit", "steady", "bump weight decay up", want=((WD, UP),), against=((WD, DOWN),), task="diabetes"),
    Case("explicit", "plateau", "decrease the learning rate slightly", want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("explicit", "steady", "raise the entropy coefficient", want=((ENT, UP),), against=((ENT, DOWN),), task="cartpole"),
    Case("explicit", "plateau", "lower the clip range", want=((CLIP, DOWN),), against=((CLIP, UP),), task="cartpole"),
    Case("explicit", "unclear", "the learning rate is too high", want=((LR, DOWN),), against=((LR, UP),)),
    Case("explicit", "overfitting", "I want dropout at 0.4", want=((DROP, UP),), against=((DROP, DOWN),)),
    Case("explicit", "steady", "anneal the lr", want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("explicit", "plateau", "lr 2x", want=((LR, UP),), against=((LR, DOWN),), task="cartpole"),
    # goal-like instructions
    Case("goal", "overfitting", "it is overfitting, fight it", want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("goal", "steady", "converge faster", want=((LR, UP),), against=((LR, DOWN),)),
    Case("goal", "diverging", "be careful, the run is unstable", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "overfitting", "the network memorizes the training set", want=((DROP, UP), (LR, DOWN)),
         against=((DROP, DOWN), (LR, UP))),
    Case("goal", "plateau", "we are stuck, do something", want=((LR, DOWN), (LR, UP))),
    Case("goal", "steady", "training is too slow", want=((LR, UP),), against=((LR, DOWN),)),
    Case("goal", "diverging", "the loss is jumping around", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "steady", "be conservative from now on", want=((LR, DOWN), ("alpha", DOWN)), against=((LR, UP),)),
    Case("goal", "overfitting", "it generalizes badly", want=((WD, UP), (DROP, UP), (LR, DOWN)),
         against=((WD, DOWN), (DROP, DOWN), (LR, UP)), task="diabetes"),
    Case("goal", "steady", "the model underfits; regularize less", want=((DROP, DOWN), (WD, DOWN), (LR, UP)),
         against=((DROP, UP), (WD, UP)), task="diabetes"),
    Case("goal", "plateau", "explore more", want=((ENT, UP),), against=((ENT, DOWN),), task="cartpole"),
    Case("goal", "steady", "speed things up", want=((LR, UP),), against=((LR, DOWN),), task="cartpole"),
    Case("goal", "overfitting", "increase regularization", want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("goal", "diverging", "make training more stable", want=((LR, DOWN), (CLIP, DOWN)), against=((LR, UP),),
         task="cartpole"),
    # no instruction: unambiguous evidence
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),)),
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("evidence", "plateau", None, want=((LR, DOWN),), against=((LR, UP),), task="cartpole"),
    Case("evidence", "overfitting", None, want=((DROP, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP))),
    Case("evidence", "overfitting", None, want=((DROP, UP), (WD, UP), (LR, DOWN)), against=((DROP, DOWN), (LR, UP)),
         task="diabetes"),
    Case("evidence", "diverging", None, want=((LR, DOWN),), against=((LR, UP),)),
    Case("evidence", "diverging", None, want=((LR, DOWN),), against=((LR, UP),), task="diabetes"),
    Case("evidence", "diverging", None, want=((LR, DOWN), (CLIP, DOWN)), against=((LR, UP), (CLIP, UP)), task="cartpole"),
    Case("evidence", "steady", None, hold=True),
    Case("evidence", "steady", None, hold=True, task="diabetes"),
    Case("evidence", "steady", None, hold=True, task="cartpole"),
    Case("evidence", "steady_late", None, hold=True),
)  # fmt: skip

# Objective series (the last value is this epoch) per state, as multiples of the task's scale below; the
# training counterpart's series for the gap. "unclear": a small dip within the noise band.
STATES: dict[str, tuple[list[float], list[float]]] = {
    "steady": ([0.60, 0.70, 0.78, 0.84, 0.88, 0.91], [0.61, 0.71, 0.79, 0.85, 0.89, 0.92]),
    "steady_late": ([0.80, 0.85, 0.88, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.955], [0.81, 0.86, 0.89, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.965]),
    "plateau": ([0.60, 0.80, 0.900, 0.912, 0.911, 0.910], [0.61, 0.81, 0.91, 0.922, 0.921, 0.920]),
    "overfitting": ([0.60, 0.75, 0.82, 0.86, 0.88, 0.885], [0.62, 0.80, 0.90, 0.96, 0.985, 0.999]),
    "diverging": ([0.60, 0.75, 0.82, 0.86, 0.88, 0.40], [0.61, 0.76, 0.83, 0.87, 0.89, 0.42]),
    "unclear": ([0.60, 0.75, 0.82, 0.86, 0.880, 0.8795], [0.61, 0.76, 0.83, 0.87, 0.89, 0.8895]),
}  # fmt: skip


def task_spec(name: str) -> TaskSpec:
    from tasks.registry import task_class

    return task_class(name).spec()


TASK_METRICS = {  # objective, training counterpart, how a fraction in STATES maps to the objective's units
    "mnist": ("val_acc", "train_acc", lambda x: x),
    "diabetes": ("val_rmse", "train_rmse", lambda x: 120.0 - 80.0 * x),  # 0.885 -> 49.2 RMSE; the gap beyond 7.5
    "cartpole": ("eval_return_mean", "train_return_mean", lambda x: 500.0 * x),
}
PARAM_SHAPES = {
    "mnist": {"conv.0.weight": [32, 1, 3, 3], "conv.0.bias": [32], "fc.3.weight": [10, 128], "fc.3.bias": [10]},
    "diabetes": {"net.0.weight": [64, 10], "net.0.bias": [64], "net.3.weight": [1, 64], "net.3.bias": [1]},
    "cartpole": {"policy_net.0.weight": [64, 4], "action_net.weight": [2, 64], "value_net.weight": [1, 64]},
}


def case_metrics(case: Case, index: int) -> EpochMetrics:
    """The ``EpochMetrics`` of ``case``: the task's spec at its defaults, the state's history, the instruction
    given now (its first decision)."""
    spec = task_spec(case.task)
    objective, train, scale = TASK_METRICS[case.task]
    values = {k.name: k.default for k in spec.hyperparameters}
    val_series, train_series = STATES[case.state]
    history = [
        EpochSummary(epoch=e + 1, metrics={objective: scale(v), train: scale(t)}, hyperparameters=values, alpha=0.4)
        for e, (v, t) in enumerate(zip(val_series, train_series))
    ]
    shapes = PARAM_SHAPES[case.task]
    instruction = (
        Instruction(instruction_id=f"case-{index}", text=case.instruction, source="flag", received_at=time.time())
        if case.instruction
        else None
    )
    return EpochMetrics(
        run_id=f"guidance-{index}", epoch=len(history), epochs_total=30, task=spec, regime="bench", budget=1000,
        metrics=history[-1].metrics, hyperparameters=values, alpha=0.4, grad_norms={n: 0.1 for n in shapes},
        weight_norms={n: 5.0 for n in shapes}, param_shapes=shapes, wall_s=1.0, history=history,
        instruction=instruction,
    )  # fmt: skip


@dataclass
class Outcome:
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


def judge_case(case: Case, m: EpochMetrics, decision) -> tuple[bool, bool, bool]:
    """(followed, contradicted, held) of a decision against the case's expectation."""
    command, before = decision.command, m.hyperparameters
    moved = {name: m.task.knob(name).direction(command.hyperparameters[name], before[name]) for name in before}
    moved["alpha"] = (command.alpha > m.alpha) - (command.alpha < m.alpha)
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


def run_cases(graph, policy_name: str, command_space: str, verbose: bool = False) -> list[Outcome]:
    from agents.service import decide

    outcomes = []
    for i, case in enumerate(CASES):
        m = case_metrics(case, i)
        started = time.perf_counter()
        decision = decide(graph, policy_name, m, max_repairs=2, command_space=command_space)
        latency = time.perf_counter() - started
        followed, contradicted, held = judge_case(case, m, decision)
        # the recorded plan: how many candidates there were, and the rationale's flags
        note = next((n for n in decision.notes if n.get("action") == "expert_choice"), {})
        outcomes.append(Outcome(case, followed, contradicted, held, latency, decision.command.rationale,
                                decision.choice, decision.choice_margin, len(note.get("candidates", [])) or 1,
                                bool(note.get("rationale_copied")), bool(note.get("rationale_unsupported_numbers")),
                                decision.fallback, decision.notes))  # fmt: skip
        mark = "ok " if followed else "NO "
        print(f"  {mark} {case.kind:<8} {case.task:<8} {case.state:<11} {str(case.instruction)[:46]!r:<48} "
              f"{latency:5.2f}s {decision.choice or '-'}", flush=True)  # fmt: skip
        if verbose:
            print(f"      {decision.command.rationale}")
    return outcomes


def share(values: list[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    """The rates the issue's targets are stated in, plus latency and how often the model had a real choice."""
    by = {kind: [o for o in outcomes if o.case.kind == kind] for kind in ("explicit", "goal", "evidence")}
    steady = [o for o in by["evidence"] if o.case.hold]
    latencies = sorted(o.latency_s for o in outcomes)
    choices = [o for o in outcomes if o.candidates > 1]
    return {
        "cases": len(outcomes),
        "explicit_followed": share([o.followed for o in by["explicit"]]),
        "explicit_contradicted": share([o.contradicted for o in by["explicit"]]),
        "goal_followed": share([o.followed for o in by["goal"]]),
        "goal_contradicted": share([o.contradicted for o in by["goal"]]),
        "evidence_agreement": share([o.followed for o in by["evidence"] if not o.case.hold]),
        "steady_hold": share([o.held for o in steady]),
        "hold_rate": share([o.held for o in outcomes]),
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": statistics.quantiles(latencies, n=20, method="inclusive")[-1],
        "model_choices": len(choices),
        "median_margin": statistics.median([o.margin for o in choices if o.margin is not None]) if choices else math.nan,
        "copied_rationales": sum(o.copied for o in outcomes),
        "invented_numbers": sum(o.invented_numbers for o in outcomes),
        "fallbacks": sum(o.fallback for o in outcomes),
    }


def print_summary(f: dict[str, float], form: str) -> None:
    def pct(x):
        return f"{100 * x:5.1f} %"

    rows = [
        (f"explicit instructions followed (target >= {TARGETS['explicit']:.0%})", pct(f["explicit_followed"])),
        ("explicit instructions contradicted (target 0)", pct(f["explicit_contradicted"])),
        (f"goal-like instructions followed (target >= {TARGETS['goal']:.0%})", pct(f["goal_followed"])),
        ("goal-like instructions contradicted", pct(f["goal_contradicted"])),
        (f"no instruction: agrees with the evidence (target >= {TARGETS['evidence']:.0%})", pct(f["evidence_agreement"])),
        (f"no instruction: holds on steady gains (target >= {TARGETS['steady_hold']:.0%})", pct(f["steady_hold"])),
        ("hold rate, all cases", pct(f["hold_rate"])),
        ("decision latency p50 / p95", f"{f['latency_p50_s']:.2f} / {f['latency_p95_s']:.2f} s"),
        ("cases where the model chose among candidates", f"{f['model_choices']} (median margin {f['median_margin']:.2f})"),
        ("rationales copied from the prompt / citing a number not in it", f"{f['copied_rationales']} / {f['invented_numbers']}"),
        ("fallbacks", f"{f['fallbacks']}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nReflectNet guidance benchmark: {f['cases']} cases, decision form {form}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    from agents.config import AgentConfig
    from agents.graph import build_agent_graph, pipeline_with
    from agents.service import make_policy_and_judge
    from orchestration.cli import CliError, add_llm_flags, model_spec
    from orchestration.configs import agent_settings, llm_settings
    from orchestration.spec import RunSpec

    parser = argparse.ArgumentParser(prog="python -m bench.guidance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="print each decision's rationale")
    add_llm_flags(parser)
    args = parser.parse_args(argv)
    try:
        spec = RunSpec(controllers=["llm"], llm=model_spec(args), pipeline=pipeline_with([]))
    except CliError as exc:
        parser.error(str(exc))
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
            print(f"{len(CASES)} cases, model {settings.model} at {settings.base_url}, decision form {settings.decision_form}")
            outcomes = run_cases(graph, policy.name, cfg.command_space, args.verbose)
        finally:
            if server is not None:
                server.stop()
    figures = summary(outcomes)
    print_summary(figures, settings.decision_form)
    met = (figures["explicit_followed"] >= TARGETS["explicit"] and figures["explicit_contradicted"] == 0
           and figures["goal_followed"] >= TARGETS["goal"] and figures["evidence_agreement"] >= TARGETS["evidence"]
           and figures["steady_hold"] >= TARGETS["steady_hold"])  # fmt: skip
    print(f"  targets {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""run.py's flags: their names, types, help texts and defaults (:class:`orchestration.spec.RunSpec`'s, and the
task's where the task owns them). Imports nothing heavy: ``python run.py --help`` answers in a fraction of a
second."""

from __future__ import annotations

import argparse
from pathlib import Path

from model_server import LOCAL_MODEL_NAME
from orchestration.cli.one_line import OneLineParser
from orchestration.spec import DEFAULT_REMOTE_MODEL, RULE_AGENT_TIMEOUT_S, default, model_default


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type for ``kind`` within [low, high] (``low_open``: strictly above low), saying what was wrong."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            if high is not None:
                raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {value}")
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def _comma_list(text: str) -> list[str]:
    """A comma list of names, in order, without repeats; what they may be is checked in validate_args."""
    items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not items:
        raise argparse.ArgumentTypeError(f"expected a name or a comma list of names, got {text!r}")
    return items


def _price(text: str) -> tuple[float, float]:
    """``IN,OUT``: USD per million prompt tokens and per million completion tokens, each a number >= 0."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"must be IN,OUT (USD per million prompt, completion tokens), got {text!r}")
    parse = _number(float, 0.0)
    try:
        return parse(parts[0].strip()), parse(parts[1].strip())
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"IN,OUT: each {exc}") from None


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0.0, low_open=True)
_temperature = _number(float, 0.0, 2.0)


def build_parser() -> argparse.ArgumentParser:
    """run.py's flags; their defaults are :class:`RunSpec`'s (and the task's, where the task owns them)."""
    p = OneLineParser(
        prog="run.py",
        description="Train a task (the paper's MNIST CNN by default) with and without an agent steering it; "
        "record everything in DuckDB.",
    )
    _experiment_flags(p)
    _run_flags(p)
    _agent_flags(p)
    add_llm_flags(p)
    return p


def add_llm_flags(p: argparse.ArgumentParser) -> None:
    """The ``--llm*`` flags (run.py's, and the benchmarks' that ask a model), read by :func:`model_spec`."""
    model = p.add_argument_group("language model (--controller llm)")
    _model_flags(model)
    _model_behaviour_flags(model)
    _model_cost_flags(model)


def _experiment_flags(p: argparse.ArgumentParser) -> None:
    """What is trained and compared: task, regimes, controllers, epochs, seeds, arms."""
    p.add_argument(
        "--task",
        default=default("task"),
        help="what to train: mnist (the paper's CNN), diabetes (MLP regression, scikit-learn's data), cartpole "
        "(Stable-Baselines3 PPO on Gymnasium CartPole-v1), an entry point of group 'reflectnet.tasks', or "
        f"package.module:factory (default: {default('task')})",
    )
    p.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a keyword argument of the task's factory, repeatable; VALUE is read as JSON when it parses "
        "(e.g. --task-option eval_episodes=5) (default: none)",
    )
    p.add_argument(
        "--regime",
        type=_comma_list,
        default=None,
        help="the task's data budget, a comma list, or 'all'; mnist: full=60000, 10pct=6000, 1pct=600, 100, 10 "
        "images; diabetes: full=353, 200, 100, 50 patients; cartpole: 2k, 4k, 8k environment steps per epoch "
        "(default: the task's, 1pct for mnist)",
    )
    p.add_argument(
        "--controller",
        type=_comma_list,
        default=default("controllers"),
        help="who steers the guided arm, or a comma list of them: a language model ('llm'), the rule policy "
        "('heuristic'), torch's ReduceLROnPlateau ('plateau'), seeded uniform draws over the same actions ('random', "
        "the chance control), nobody ('none': the baseline arm only), 'aa' (the A/A arm: the baseline again with "
        "another training-order seed, the noise floor), an entry point of group 'reflectnet.controllers', or "
        f"package.module:factory (default: {','.join(default('controllers'))})",
    )
    p.add_argument(
        "--start",
        action="append",
        default=[],
        metavar="KNOB=VALUE[,KNOB=VALUE]",
        help="knob values every arm (baseline, aa, guided) starts from instead of the task's defaults, e.g. a bad "
        "start: --start learning_rate=1e-2,dropout=0; repeatable; within the knob's hard bounds (default: none)",
    )
    p.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs per arm (default: the task's, 30 for mnist)"
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=default("jobs"),
        help="arms trained at once, each with its share of the cores as torch threads; one agent per controller and "
        "the embedded model serve them all, the recorder stays the only writer (default: "
        f"{default('jobs')}: one arm after another)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="run each arm (its trainer and agent) as a Ray task on a cluster: 'auto' (the cluster `ray start` runs "
        "here, else a local one) or the head's address; the recorder and database stay here, records come back "
        "over CURVE-encrypted TCP; --jobs arms at a time (default: local processes)",
    )
    p.add_argument("--ray-cpus", type=float, default=default("ray_cpus"), help="CPUs Ray reserves per arm (default: 1)")
    p.add_argument("--ray-gpus", type=float, default=default("ray_gpus"), help="GPUs Ray reserves per arm (default: 0)")
    p.add_argument(
        "--decisions",
        choices=("sync", "async"),
        default=default("decisions"),
        help="how training waits for its controller: 'sync' (the paper's protocol) trains each epoch with the "
        "decision made after the previous one; 'async' trains on while it is made and applies it at the first epoch "
        f"boundary after it arrives, the epoch asked for and the epoch applied both recorded (default: "
        f"{default('decisions')})",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=default("seed"),
        help=f"seed for data subset, init and batch order (default: {default('seed')})",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="number of seeds, starting at --seed; every regime x controller runs once per seed (default: 1)",
    )
    p.add_argument(
        "--arms",
        choices=("both", "baseline", "guided"),
        default=default("arms"),
        help=f"which arms of the pair to run (default: {default('arms')})",
    )


def _run_flags(p: argparse.ArgumentParser) -> None:
    """Where and how: replay, resume, rerun, database, run folders, device, task options from flags."""
    p.add_argument(
        "--replay",
        metavar="RUN_ID",
        default=None,
        help="re-run a recorded guided run applying its recorded commands in order, with no model calls, and "
        "compare its epochs with the original (default: none)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue a failed or interrupted run from its last completed epoch (its checkpoint), with its "
        "recorded settings (default: none)",
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run again what the database already holds as completed with the same settings (default: skip it)",
    )
    p.add_argument("--db", type=Path, default=default("db"), help=f"DuckDB file to record into (default: {default('db')})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="training batch size, for tasks that take one (default: the task's, 64 for mnist)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=default("device"),
        help=f"torch device for the trainer; auto picks cuda when available (default: {default('device')})",
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="mnist: validate with the eager model instead of torch.compile (default: compiled, ~2.7x faster on CPU)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=default("out"),
        help=f"folder for run directories with logs and configs (default: {default('out')})",
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="mnist: the MNIST cache folder (default: ~/.cache/reflectnet/mnist)"
    )


def _agent_flags(p: argparse.ArgumentParser) -> None:
    """The agent's graph, the user's instructions to it, and the trainer's patience with it."""
    p.add_argument(
        "--instruction",
        default=None,
        metavar="TEXT|@FILE",
        help="a plain-language instruction for the guided arms' agent, in every controller and judge prompt from "
        "the first decision on (e.g. 'it is overfitting, fight it'); @FILE reads it from a file (default: none)",
    )
    p.add_argument(
        "--instructions",
        type=Path,
        default=None,
        metavar="FILE",
        help="scripted instructions: lines 'EPOCH TEXT' (active from the decision after EPOCH) or 'EPOCH clear' "
        "(withdrawn); # starts a comment; a line for the last epoch or later cannot take effect and is said so "
        "before training (default: none)",
    )
    p.add_argument(
        "--nodes",
        default="",
        help="extra agent nodes, comma-separated, inserted after validation: a built-in ('critic'), an "
        "entry point of group 'reflectnet.nodes', or package.module:function (default: none)",
    )
    p.add_argument(
        "--agent-timeout",
        type=_positive_float,
        default=default("agent_timeout_s"),
        help=f"seconds the trainer waits for the agent per try before retrying (default: "
        f"{RULE_AGENT_TIMEOUT_S:g} for controllers without a model; for llm, enough for every model call of one decision)",
    )
    p.add_argument(
        "--agent-retries",
        type=_non_negative_int,
        default=default("agent_retries"),
        help=f"retries after a timeout before the fallback command (default: {default('agent_retries')})",
    )
    p.add_argument(
        "--max-repairs",
        type=_non_negative_int,
        default=default("max_repairs"),
        help=f"times an invalid answer is sent back for repair before deterministic repair (default: {default('max_repairs')})",
    )


def _model_flags(llm) -> None:
    """Which model the ``llm`` controller reaches, and how (:class:`orchestration.spec.ModelSpec`)."""
    llm.add_argument(
        "--llm",
        choices=("local", "openai"),
        default=model_default("provider"),
        help="'local': the embedded SmolLM2-135M served by llama.cpp on loopback, offline; 'openai': an "
        f"OpenAI-compatible endpoint (implied by --llm-base-url) (default: {model_default('provider')})",
    )
    llm.add_argument(
        "--llm-base-url",
        default=None,
        help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1; the key is "
        "read from OPENAI_API_KEY (default: none)",
    )
    llm.add_argument(
        "--llm-model",
        default=None,
        help=f"model name at the endpoint (default: {LOCAL_MODEL_NAME} for local, {DEFAULT_REMOTE_MODEL} otherwise)",
    )
    llm.add_argument(
        "--llm-timeout",
        type=_positive_float,
        default=model_default("timeout_s"),
        help=f"seconds per model call (default: {model_default('timeout_s'):g})",
    )
    llm.add_argument(
        "--llm-max-retries",
        type=_non_negative_int,
        default=model_default("max_retries"),
        help=f"HTTP retries per model call on connection errors and 5xx (default: {model_default('max_retries')})",
    )


def _model_behaviour_flags(llm) -> None:
    """How the ``llm`` controller asks: sampling, structured output, command space, reflection."""
    llm.add_argument(
        "--llm-temperature",
        type=_temperature,
        default=model_default("temperature"),
        help=f"sampling temperature (default: {model_default('temperature')})",
    )
    llm.add_argument(
        "--llm-response-format",
        choices=("auto", "json_schema", "json_object", "none"),
        default=model_default("response_format"),
        help="structured output: OpenAI's json_schema, llama.cpp's json_object with a schema, or none; auto picks "
        f"what the server accepts (default: {model_default('response_format')})",
    )
    llm.add_argument(
        "--llm-command-space",
        choices=("auto", "grid", "free"),
        default="auto",
        help="'free': any number in the allowed ranges (the paper's form); 'grid': a few choices around the current "
        "values, enforced by the server's schema-constrained decoding; auto: grid for local, free otherwise "
        "(default: auto)",
    )
    llm.add_argument(
        "--llm-decision",
        choices=("auto", "expert", "free"),
        default=model_default("decision"),
        help="'expert': the model chooses among candidate actions derived from the trends and your instruction, "
        "and says why (agents/controllers/expert.py; the rule judges); 'free': the model writes the whole command and judges "
        "(the paper's form); auto: expert for the embedded model, free for an endpoint (default: auto)",
    )
    llm.add_argument(
        "--no-llm-reflection",
        action="store_true",
        help="judge previous decisions by rule instead of asking the model (default: the model judges)",
    )
    llm.add_argument(
        "--no-reflection-feedback",
        action="store_true",
        help="do not show the verdict on the previous decision in the next prompt, for ablations (default: shown)",
    )


def _model_cost_flags(llm) -> None:
    """What the model's calls cost, and the run's caps on them (:class:`orchestration.spec.ModelSpec`)."""
    llm.add_argument(
        "--llm-price",
        type=_price,
        default=None,
        metavar="IN,OUT",
        help="USD per million prompt tokens and per million completion tokens, e.g. 0.15,0.60; each decision's "
        "cost is recorded in decisions.cost_usd and summed per run in the view run_costs (default: 0,0)",
    )
    llm.add_argument(
        "--max-llm-calls",
        type=_positive_int,
        default=None,
        metavar="N",
        help="model calls per run, after which its decisions are the controller's fallback (current knobs), "
        "recorded with fallback_reason llm_call_cap (default: no cap)",
    )
    llm.add_argument(
        "--max-llm-cost",
        type=_positive_float,
        default=None,
        metavar="USD",
        help="the same for the cost of a run's model calls at --llm-price (fallback_reason llm_cost_cap); the call "
        "that reaches it is the last (default: no cap)",
    )

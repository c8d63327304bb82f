"""The command line of ``run.py``: flags, their defaults and the checks argparse cannot do.

Imports nothing heavy at module level (no torch, langchain, DuckDB): ``python run.py --help`` answers
in a fraction of a second; what a check needs is imported inside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from agents.defaults import DEFAULT_REMOTE_MODEL, LOCAL_MODEL_NAME
from trainer.defaults import REGIMES, default_data_dir

if TYPE_CHECKING:
    from agents.llm import LLMSettings

CONTROLLERS = ("none", "heuristic", "plateau", "llm")
DEFAULTS = {
    "regime": "1pct",
    "controller": "llm",
    "epochs": 30,
    "seed": 0,
    "batch_size": 64,
    "db": Path("runs") / "reflectnet.duckdb",
    "out": Path("runs"),
    "arms": "both",
    "device": "auto",
    "agent_timeout": None,  # derived from the LLM timeouts, see agent_timeout_s()
    "heuristic_agent_timeout": 20.0,
    "llm": "local",
    "llm_timeout": 20.0,
    "llm_max_retries": 0,
    "llm_temperature": 0.2,
    "llm_response_format": "auto",
    "agent_retries": 1,
    "max_repairs": 2,
}


class CliError(Exception):
    """A bad flag value: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage first; one clear line is enough
        raise CliError(message)


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


def _choice_list(choices, everything: str | None = None):
    """An argparse type for a comma list of ``choices`` (or ``everything`` for all of them), in order."""

    def parse(text: str) -> list[str]:
        if everything is not None and text == everything:
            return list(choices)
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in choices]
        if bad or not items:
            allowed = ", ".join(choices) + (f", or {everything}" if everything else "")
            raise argparse.ArgumentTypeError(
                f"invalid choice: {', '.join(map(repr, bad)) or repr(text)} (choose from {allowed})"
            )
        return list(dict.fromkeys(items))

    return parse


_positive_int = _number(int, 1)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0.0, low_open=True)
_temperature = _number(float, 0.0, 2.0)


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = OneLineParser(
        prog="run.py",
        description="Train the paper's CNN on MNIST with and without an agent steering it; record everything in DuckDB.",
    )
    p.add_argument(
        "--regime",
        type=_choice_list(REGIMES, "all"),
        default=[d["regime"]],
        help=f"training-set size, a comma list, or 'all': {', '.join(f'{k}={v}' for k, v in REGIMES.items())} "
        f"(default: {d['regime']})",
    )
    p.add_argument(
        "--controller",
        type=_choice_list(CONTROLLERS),
        default=[d["controller"]],
        help="who steers the guided arm, or a comma list of them: a language model ('llm'), the rule policy "
        "('heuristic'), torch's ReduceLROnPlateau ('plateau'), or nobody ('none': the baseline arm only) "
        f"(default: {d['controller']})",
    )
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"], help=f"epochs per arm (default: {d['epochs']})")
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        default=d["seed"],
        help=f"seed for data subset, init and batch order (default: {d['seed']})",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="number of seeds, starting at --seed; every regime x controller runs once per seed (default: 1)",
    )
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
    p.add_argument("--db", type=Path, default=d["db"], help=f"DuckDB file to record into (default: {d['db']})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=d["batch_size"],
        help=f"training batch size (default: {d['batch_size']})",
    )
    p.add_argument(
        "--nodes",
        default="",
        help="extra agent nodes, comma-separated, inserted after validation: a built-in ('critic'), an "
        "entry point of group 'reflectnet.nodes', or package.module:function (default: none)",
    )
    p.add_argument(
        "--arms",
        choices=("both", "baseline", "guided"),
        default=d["arms"],
        help=f"which arms of the pair to run (default: {d['arms']})",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=d["device"],
        help=f"torch device for the trainer; auto picks cuda when available (default: {d['device']})",
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="validate with the eager model instead of torch.compile (default: compiled, ~2.7x faster on CPU)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=d["out"],
        help=f"folder for run directories with logs and configs (default: {d['out']})",
    )
    p.add_argument("--data-dir", type=Path, default=None, help=f"MNIST cache folder (default: {default_data_dir()})")
    p.add_argument(
        "--agent-timeout",
        type=_positive_float,
        default=d["agent_timeout"],
        help=f"seconds the trainer waits for the agent per try before retrying (default: "
        f"{d['heuristic_agent_timeout']:g} for heuristic; for llm, enough for every model call of one decision)",
    )
    p.add_argument(
        "--agent-retries",
        type=_non_negative_int,
        default=d["agent_retries"],
        help=f"retries after a timeout before the fallback command (default: {d['agent_retries']})",
    )
    p.add_argument(
        "--max-repairs",
        type=_non_negative_int,
        default=d["max_repairs"],
        help=f"times an invalid answer is sent back for repair before deterministic repair (default: {d['max_repairs']})",
    )
    llm = p.add_argument_group("language model (--controller llm)")
    llm.add_argument(
        "--llm",
        choices=("local", "openai"),
        default=d["llm"],
        help="'local': the embedded SmolLM2-135M served by llama.cpp on loopback, offline; 'openai': an "
        f"OpenAI-compatible endpoint (implied by --llm-base-url) (default: {d['llm']})",
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
        default=d["llm_timeout"],
        help=f"seconds per model call (default: {d['llm_timeout']:g})",
    )
    llm.add_argument(
        "--llm-max-retries",
        type=_non_negative_int,
        default=d["llm_max_retries"],
        help=f"HTTP retries per model call on connection errors and 5xx (default: {d['llm_max_retries']})",
    )
    llm.add_argument(
        "--llm-temperature",
        type=_temperature,
        default=d["llm_temperature"],
        help=f"sampling temperature (default: {d['llm_temperature']})",
    )
    llm.add_argument(
        "--llm-response-format",
        choices=("auto", "json_schema", "json_object", "none"),
        default=d["llm_response_format"],
        help="structured output: OpenAI's json_schema, llama.cpp's json_object with a schema, or none; auto picks "
        f"what the server accepts (default: {d['llm_response_format']})",
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
        "--no-llm-reflection",
        action="store_true",
        help="judge previous decisions by rule instead of asking the model (default: the model judges)",
    )
    llm.add_argument(
        "--no-reflection-feedback",
        action="store_true",
        help="do not show the verdict on the previous decision in the next prompt, for ablations (default: shown)",
    )
    return p


def llm_settings(args: argparse.Namespace) -> LLMSettings | None:
    """How the agent reaches its model, from the flags; None when no guided arm uses the llm controller."""
    if "llm" not in args.controller:
        return None
    from agents.llm import LLMSettings

    remote = args.llm == "openai" or args.llm_base_url is not None
    return LLMSettings(
        provider="openai" if remote else "local",
        base_url=args.llm_base_url or ("https://api.openai.com/v1" if remote else "http://127.0.0.1:0/v1"),
        model=args.llm_model or (DEFAULT_REMOTE_MODEL if remote else LOCAL_MODEL_NAME),
        timeout_s=args.llm_timeout,
        max_retries=args.llm_max_retries,
        temperature=args.llm_temperature,
        response_format=args.llm_response_format,
    )


def command_space(args: argparse.Namespace, settings: LLMSettings | None) -> str:
    if args.llm_command_space != "auto":
        return args.llm_command_space
    return "grid" if settings is not None and settings.provider == "local" else "free"


def agent_timeout_s(args: argparse.Namespace) -> float:
    """Per-try wait of the trainer: the flag, or long enough for every model call of one decision."""
    if args.agent_timeout is not None:
        return args.agent_timeout
    if "llm" not in args.controller:
        return DEFAULTS["heuristic_agent_timeout"]
    calls = (args.max_repairs + 1) * (args.llm_max_retries + 1) + (0 if args.no_llm_reflection else 1)
    return calls * args.llm_timeout + 10.0


def preflight_database(db: Path) -> None:
    """Create and migrate the database now, so a bad path, a held lock or a damaged WAL fails before any
    process starts."""
    import duckdb

    from storage.database import DatabaseError, open_database
    from storage.schema import migrate

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--db {db}: cannot open for writing: {exc.strerror}") from None
    try:
        con = open_database(db)
    except DatabaseError as exc:
        raise CliError(f"--db {db}: {exc}") from None
    try:
        migrate(con)
    except duckdb.Error as exc:
        raise CliError(f"--db {db}: not a usable ReflectNet database: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def validate_args(args: argparse.Namespace) -> list[str]:
    """Checks argparse cannot do; returns the full node pipeline."""
    from agents.graph import UnknownNodeError, check_pipeline, pipeline_with, resolve_node

    extras = [n.strip() for n in args.nodes.split(",") if n.strip()]
    for name in extras:
        try:
            resolve_node(name)
        except UnknownNodeError as exc:
            raise CliError(f"--nodes: {exc}") from None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.llm_base_url is not None and not args.llm_base_url.startswith(("http://", "https://")):
        raise CliError(f"--llm-base-url must start with http:// or https://, got {args.llm_base_url!r}")
    try:
        check_pipeline(pipeline_with(extras))
    except ValueError as exc:
        raise CliError(f"--nodes: {exc}") from None
    if args.resume and args.replay:
        raise CliError("--resume and --replay cannot be combined")
    if args.controller == ["none"] and args.arms == "guided":
        raise CliError("--arms guided needs a controller; --controller none runs the baseline only")
    preflight_database(args.db)
    return pipeline_with(extras)

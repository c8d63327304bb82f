"""The checks of run.py's flags that argparse cannot do: the task and its regimes and options, controllers,
nodes, the model flags, the database; :func:`validate_args` turns checked flags into a :class:`RunSpec`.
What a check needs (the task registry, torch, DuckDB) is imported inside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from orchestration.cli.one_line import CliError
from orchestration.cli.schedule import instruction_schedule
from orchestration.spec import AA_CONTROLLER, ModelSpec, RunSpec


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


def _option_value(text: str):
    """A --task-option value: JSON when it parses (numbers, true/false, lists), else the text itself."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def task_options(args: argparse.Namespace) -> dict:
    """The task factory's keyword arguments from --task-option, --data-dir, --batch-size and --no-compile."""
    options = {}
    for item in args.task_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"--task-option must be KEY=VALUE with KEY a Python identifier, got {item!r}")
        options[key.strip()] = _option_value(value)
    flags = {"data_dir": args.data_dir and str(args.data_dir.resolve()), "batch_size": args.batch_size,
             "compile_eval": False if args.no_compile else None}  # fmt: skip
    options.update({key: value for key, value in flags.items() if value is not None})
    return options


def resolve_task(args: argparse.Namespace) -> None:
    """Check --task, --regime, --epochs and the task options against the task's declarations and fill in the
    task's defaults: ``args.regime`` becomes the list of regimes, ``args.epochs`` a number, and
    ``args.task_options`` the factory's keyword arguments (each must be one the factory takes)."""
    from tasks.registry import UnknownTaskError, accepted_options, resolve_task_factory, task_class

    options = task_options(args)
    try:
        refused = sorted(set(options) - set(accepted_options(resolve_task_factory(args.task), options)))
        declared = task_class(args.task, {k: v for k, v in options.items() if k not in refused})
    except UnknownTaskError as exc:
        raise CliError(f"--task: {exc}") from None
    if refused:
        raise CliError(f"task {declared.name!r} takes no option(s) {', '.join(refused)}")
    regimes = args.regime or [declared.default_regime]
    regimes = list(declared.regimes) if regimes == ["all"] else regimes
    unknown = [r for r in regimes if r not in declared.regimes]
    if unknown:
        known = ", ".join(f"{k}={v}" for k, v in declared.regimes.items())
        raise CliError(
            f"--regime: task {declared.name!r} has no regime {', '.join(map(repr, unknown))} (choose from {known}, or all)"
        )
    args.regime, args.epochs, args.task_options = regimes, args.epochs or declared.default_epochs, options


def start_values(args: argparse.Namespace, declared) -> dict[str, float]:
    """``--start KNOB=VALUE[,KNOB=VALUE]`` (repeatable) as knob values of the task class ``declared``, each a number
    within its knob's hard bounds; CliError (one line) for a malformed pair, an unknown knob, a knob given twice, a
    value that is not a number or lies outside the bounds."""
    start: dict[str, float] = {}
    for item in (piece for given in args.start for piece in given.split(",")):
        name, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not name or not text:
            raise CliError(f"--start must be KNOB=VALUE[,KNOB=VALUE], got {item!r}")
        try:
            knob = declared.hyperparameter(name)
        except KeyError:
            known = ", ".join(k.name for k in declared.hyperparameters)
            raise CliError(f"--start: task {declared.name!r} has no knob {name!r}; its knobs: {known}") from None
        if name in start:
            raise CliError(f"--start gives {name} twice")
        try:
            value = float(text)
        except ValueError:
            raise CliError(f"--start {name}: {text!r} is not a number") from None
        if not knob.low <= value <= knob.high:  # NaN fails this too
            raise CliError(f"--start {name}={text} is outside its hard bounds [{knob.low:g}, {knob.high:g}]")
        start[name] = value
    if start and (args.replay or args.resume):
        raise CliError("--start cannot be combined with --replay or --resume: they use the recorded run's settings")
    return start


def check_aa_arm(args: argparse.Namespace, declared) -> None:
    """An A/A arm (``--controller aa``) needs a task that can vary its training order apart from its data and
    initial weights (``tasks.base.takes_order_seed``); CliError (one line) otherwise."""
    if AA_CONTROLLER not in args.controller:
        return
    from tasks.base import takes_order_seed

    if not takes_order_seed(declared):
        raise CliError(f"--controller aa: task {declared.name!r} cannot vary its training order (its setup() takes "
                       f"no keyword order_seed, see tasks/base.py), so an A/A arm would repeat the baseline exactly")


def validate_controllers(args: argparse.Namespace) -> None:
    """Every --controller name must resolve (built-in, entry point or module:factory)."""
    from agents.controllers import resolve_controller

    for name in args.controller:
        if name == "replay":
            raise CliError("--controller replay: replay a recorded run with --replay RUN_ID")
        if name != "none":
            try:
                resolve_controller(name)
            except ValueError as exc:
                raise CliError(f"--controller: {exc}") from None


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The ``--llm*`` flags as a :class:`ModelSpec`."""
    if args.llm_base_url is not None and not args.llm_base_url.startswith(("http://", "https://")):
        raise CliError(f"--llm-base-url must start with http:// or https://, got {args.llm_base_url!r}")
    if args.max_llm_cost is not None and not any(args.llm_price or ()):
        raise CliError(f"--max-llm-cost {args.max_llm_cost:g} needs a --llm-price above 0,0: at no price nothing costs")
    return ModelSpec(
        provider=args.llm, base_url=args.llm_base_url, model=args.llm_model, timeout_s=args.llm_timeout,
        max_retries=args.llm_max_retries, temperature=args.llm_temperature,
        response_format=args.llm_response_format, command_space=args.llm_command_space, decision=args.llm_decision,
        reflection=not args.no_llm_reflection, feed_reflection=not args.no_reflection_feedback,
        price_usd=args.llm_price, max_calls=args.max_llm_calls, max_cost_usd=args.max_llm_cost,
    )  # fmt: skip


def cost_notice(spec: RunSpec) -> str | None:
    """One line before training when a model behind an endpoint is costed at nothing (no ``--llm-price``)."""
    from agents.controllers.registry import resolve_controller

    uses_llm = any(c != "none" and resolve_controller(c).uses_llm for c in spec.controllers)
    if uses_llm and spec.llm.remote and spec.llm.price_usd is None:
        return (f"no --llm-price for {spec.llm.model_name}: its calls and tokens are recorded, their cost as 0 USD "
                "(run_costs)")  # fmt: skip
    return None


def node_pipeline(args: argparse.Namespace) -> list[str]:
    """The agent's full node list: the core nodes with the --nodes extras after validation."""
    from agents.graph import UnknownNodeError, check_pipeline, pipeline_with, resolve_node

    extras = [n.strip() for n in args.nodes.split(",") if n.strip()]
    for name in extras:
        try:
            resolve_node(name)
        except UnknownNodeError as exc:
            raise CliError(f"--nodes: {exc}") from None
    try:
        check_pipeline(pipeline_with(extras))
    except ValueError as exc:
        raise CliError(f"--nodes: {exc}") from None
    return pipeline_with(extras)


def validate_args(args: argparse.Namespace) -> RunSpec:
    """Checks argparse cannot do, the task's defaults filled in (see :func:`resolve_task`), the database
    created and migrated; the :class:`RunSpec` to carry out. Raises CliError (one line)."""
    from tasks.registry import task_class

    resolve_task(args)
    validate_controllers(args)
    declared = task_class(args.task, args.task_options)
    check_aa_arm(args, declared)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.resume and args.replay:
        raise CliError("--resume and --replay cannot be combined")
    if args.controller == ["none"] and args.arms == "guided":
        raise CliError("--arms guided needs a controller; --controller none runs the baseline only")
    spec = RunSpec(
        task=args.task, task_options=args.task_options, regimes=args.regime, controllers=args.controller,
        epochs=args.epochs, seed=args.seed, seeds=args.seeds, arms=args.arms, replay=args.replay,
        resume=args.resume, rerun=args.rerun, db=args.db, out=args.out, device=args.device,
        pipeline=node_pipeline(args), agent_timeout_s=args.agent_timeout, agent_retries=args.agent_retries,
        max_repairs=args.max_repairs, llm=model_spec(args), instructions=instruction_schedule(args),
        start=start_values(args, declared), decisions=args.decisions, jobs=args.jobs, ray=args.ray,
        ray_cpus=args.ray_cpus, ray_gpus=args.ray_gpus,
    )  # fmt: skip
    if spec.ray is not None:
        check_ray(spec)
    preflight_database(spec.db)
    return spec


def check_ray(spec: RunSpec) -> None:
    """What a Ray-driven invocation cannot do yet (``orchestration/ray_cluster.py``), as one line each."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise CliError("--ray needs Ray: pip install -e '.[ray]'") from None
    if spec.replay or spec.resume:
        raise CliError("--ray runs new arms; --replay and --resume run here, without --ray")

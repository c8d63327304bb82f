"""Which task a name means: the built-ins, the ``reflectnet.tasks`` entry-point group, or a
``package.module:factory`` reference — resolved the way agent nodes and controllers are.

A factory is a ``Task`` subclass or any callable returning a ``Task`` instance; its keyword arguments are
the task's options (``--task-option key=value`` on the command line; ``data_dir``, ``batch_size`` and
``compile_eval`` are passed from their own flags to factories that accept them).
"""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import entry_points
from typing import Any, Callable

BUILTIN_TASKS: dict[str, str] = {
    "mnist": "tasks.mnist.task:MnistTask",
    "diabetes": "tasks.diabetes:DiabetesRegression",
    "cartpole": "tasks.cartpole:CartPoleTask",
}
ENTRY_POINT_GROUP = "reflectnet.tasks"


class UnknownTaskError(ValueError):
    """A task name that is neither built in, nor an entry point, nor a loadable ``module:factory``."""


def task_names() -> list[str]:
    """Built-in task names, then those of installed entry points."""
    names = list(BUILTIN_TASKS)
    names += sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILTIN_TASKS)
    return names


def _load(reference: str) -> Callable:
    module_name, _, attr = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # a user's module may raise anything on import: one line naming it
        raise UnknownTaskError(f"cannot load task {reference!r}: {type(exc).__name__}: {exc}") from None
    if not callable(factory):
        raise UnknownTaskError(f"task {reference!r} is not callable")
    return factory


def resolve_task_factory(name: str) -> Callable:
    """The factory ``name`` refers to; raises UnknownTaskError saying what is known."""
    if name in BUILTIN_TASKS:
        return _load(BUILTIN_TASKS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:  # a broken plugin is the user's to fix: one line naming it
                raise UnknownTaskError(f"entry point {name!r} failed to load: {type(exc).__name__}: {exc}") from None
    if ":" in name:
        return _load(name)
    raise UnknownTaskError(f"unknown task {name!r}; known: {', '.join(task_names())}; or use package.module:factory")


def accepted_options(factory: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` the factory takes as keyword arguments (all of them if it takes ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return dict(options)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in options.items() if k in names}


def make_task(name: str, options: dict[str, Any] | None = None):
    """A fresh task instance for ``name`` built with the ``options`` its factory accepts. UnknownTaskError
    (one line) when the name does not resolve, the factory raises, or it returns something that is not a
    ``tasks.base.Task``."""
    from tasks.base import Task

    factory = resolve_task_factory(name)
    kwargs = accepted_options(factory, options or {})
    try:
        task = factory(**kwargs)
    except Exception as exc:  # a user's factory may raise anything: one line naming it
        raise UnknownTaskError(f"task {name!r} could not be built with {kwargs}: {type(exc).__name__}: {exc}") from None
    if not isinstance(task, Task):
        raise UnknownTaskError(f"task {name!r} gave a {type(task).__name__}, not a tasks.base.Task")
    return task


def task_class(name: str, options: dict[str, Any] | None = None):
    """The task's class (its declarations: regimes, defaults, objective) without setting it up: the factory
    itself if it is a class, else the class of one instance built with ``options``. UnknownTaskError as
    :func:`make_task`."""
    factory = resolve_task_factory(name)
    if inspect.isclass(factory):
        from tasks.base import Task

        if not issubclass(factory, Task):
            raise UnknownTaskError(f"task {name!r} is the class {factory.__name__}, not a tasks.base.Task")
        return factory
    return type(make_task(name, options))


def training_defaults(name: str) -> dict[str, Any]:
    """The keyword defaults of the task's factory (``batch_size=64`` for mnist): what a run that sets no option
    trains with, so that ``--batch-size 64`` and no flag are the same experiment."""
    try:
        parameters = inspect.signature(resolve_task_factory(name)).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

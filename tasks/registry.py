"""Which task a name means: the built-ins, the ``reflectnet.tasks`` entry-point group, or a
``package.module:factory`` reference — resolved by the one plugin resolver (``bus.plugins``), as agent nodes and
controllers are.

A factory is a ``Task`` subclass or any callable returning a ``Task`` instance; its keyword arguments are
the task's options (``--task-option key=value`` on the command line; ``data_dir``, ``batch_size`` and
``compile_eval`` are passed from their own flags to factories that accept them).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from bus.plugins import PluginError, PluginKind

BUILTIN_TASKS: dict[str, str] = {
    "mnist": "tasks.mnist.task:MnistTask",
    "diabetes": "tasks.diabetes:DiabetesRegression",
    "cartpole": "tasks.cartpole:CartPoleTask",
}
ENTRY_POINT_GROUP = "reflectnet.tasks"


class UnknownTaskError(PluginError):
    """A task name that is neither built in, nor an entry point, nor a loadable ``module:factory``."""


TASKS = PluginKind("task", ENTRY_POINT_GROUP, BUILTIN_TASKS, error=UnknownTaskError)


def task_names() -> list[str]:
    """Built-in task names, then those of installed entry points."""
    return TASKS.names()


def resolve_task_factory(name: str) -> Callable:
    """The factory ``name`` refers to; raises UnknownTaskError saying what is known."""
    return TASKS.callable(name)


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
    task = TASKS.build(name, factory, **accepted_options(factory, options or {}))
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

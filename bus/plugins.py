"""One resolver for every plugin kind: tasks, controllers and agent nodes.

A name resolves, in order, to a built-in, an entry point of the kind's group (``reflectnet.tasks``,
``reflectnet.controllers``, ``reflectnet.nodes``: an installed package's ``[project.entry-points]``), or a
``package.module:attribute`` reference, imported from ``sys.path`` (the working directory, ``PYTHONPATH``, or an
installed package). Every failure is one line, the same for each kind: an unknown name lists the known ones; an
import error, a missing attribute, an object that is not callable, and a factory that raises each name the
plugin and the first line of what went wrong. Nothing heavy is imported until a plugin is resolved.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any


class PluginError(ValueError):
    """A plugin name that cannot be resolved or built; the message is one line saying what was tried."""


def error_line(exc: BaseException) -> str:
    """``"Type: first line of the message"``: how a plugin's own error is reported."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@dataclass(frozen=True)
class PluginKind:
    """One kind of plugin. ``kind`` names it in messages ("task"); ``group`` is its entry-point group;
    ``builtins`` maps built-in names to the object or to a ``module:attribute`` reference loaded on demand;
    ``reference`` is how a message shows the reference form ("package.module:factory"); ``error`` is the
    :class:`PluginError` subclass raised."""

    kind: str
    group: str
    builtins: Mapping[str, Any]
    reference: str = "package.module:factory"
    error: type[PluginError] = PluginError

    def entry_point_names(self) -> list[str]:
        """The names of installed entry points of this kind that no built-in shadows, sorted."""
        return sorted({ep.name for ep in entry_points(group=self.group) if ep.name not in self.builtins})

    def names(self) -> list[str]:
        """Every name that resolves without a reference: the built-ins, then the entry points."""
        return [*self.builtins, *self.entry_point_names()]

    def resolve(self, name: str) -> Any:
        """The object ``name`` refers to (see the module docstring); raises :attr:`error` in one line."""
        if name in self.builtins:
            builtin = self.builtins[name]
            return self.load_reference(name, builtin) if isinstance(builtin, str) else builtin
        for ep in entry_points(group=self.group):
            if ep.name == name:
                try:
                    return ep.load()
                except Exception as exc:  # a user's package may raise anything on import
                    raise self.error(f"cannot load {self.kind} {name!r} ({ep.value}): {error_line(exc)}") from None
        if ":" in name:
            return self.load_reference(name, name)
        raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}; or use {self.reference}")

    def load_reference(self, name: str, reference: str) -> Any:
        """The attribute a ``module:attribute`` ``reference`` names; :attr:`error` when the module cannot be
        imported or lacks the attribute."""
        module_name, _, attribute = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # ImportError, or whatever the user's module raises on import
            raise self.error(f"cannot load {self.kind} {name!r}: {error_line(exc)}") from None
        if not hasattr(module, attribute):
            raise self.error(f"cannot load {self.kind} {name!r}: module {module_name!r} has no attribute {attribute!r}")
        return getattr(module, attribute)

    def callable(self, name: str) -> Callable:
        """:meth:`resolve`, refused in one line unless the object is callable."""
        found = self.resolve(name)
        if not callable(found):
            raise self.error(f"{self.kind} {name!r} is a {type(found).__name__}, not callable")
        return found

    def build(self, name: str, factory: Callable, *args, **kwargs) -> Any:
        """``factory(*args, **kwargs)``; whatever it raises becomes :attr:`error` in one line."""
        try:
            return factory(*args, **kwargs)
        except Exception as exc:  # a user's factory may raise anything
            raise self.error(f"{self.kind} {name!r} could not be built: {error_line(exc)}") from None

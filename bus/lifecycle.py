"""What every child process does the same way: read its config, turn SIGTERM/SIGINT into an
exception that unwinds through ``finally`` blocks, notice that its parent is gone (:func:`watch_parent`,
the one parent watchdog), and stop reacting to signals while it cleans up."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Stop(BaseException):
    """Raised in the main thread when the process is asked to stop (SIGTERM or SIGINT).

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way (a user's node,
    torch.compile, an HTTP client) can mistake it for a failure and carry on."""


def _raise_stop(signum, _frame):
    raise Stop(signal.Signals(signum).name)


def stop_on_signals() -> None:
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)


def watch_parent(on_orphaned: Callable[[], None], interval_s: float = 1.0, parent: int | None = None) -> None:
    """Start a daemon thread that calls ``on_orphaned()`` once, from that thread, when this process's parent
    changes from ``parent`` (default: ``os.getppid()`` now), i.e. when the process that started it is gone.

    The one parent watchdog of every ReflectNet child process. ``interval_s``: seconds between checks (how
    late the loss is noticed at most). Polling ``os.getppid()`` works on every POSIX system; Linux's
    ``PR_SET_PDEATHSIG`` would need ctypes and fires on the death of the parent *thread*.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be above 0 s, got {interval_s=}")
    watched = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == watched:
            time.sleep(interval_s)
        on_orphaned()

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def stop_when_orphaned(interval_s: float = 1.0, parent: int | None = None) -> None:
    """Raise :class:`Stop` in the main thread as soon as the parent (run.py) is gone, whatever the main
    thread is blocked in (a long epoch, a request to an agent that died with run.py): a SIGTERM to itself,
    which :func:`stop_on_signals` turns into :class:`Stop`, so the main thread unwinds through its
    ``finally`` blocks."""
    watch_parent(lambda: os.kill(os.getpid(), signal.SIGTERM), interval_s, parent)


def ignore_signals() -> None:
    """For shutdown: a second signal must not abandon a cleanup half-way."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_config(config_cls: type[ConfigT], prog: str, description: str, argv: list[str] | None = None) -> ConfigT:
    """The process's config from ``--config <json file>`` written by run.py."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help=f"{config_cls.__name__} JSON written by run.py")
    args = parser.parse_args(argv)
    return config_cls.model_validate_json(args.config.read_text())

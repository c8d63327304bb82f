"""The one runtime of every child process (trainer, agent, recorder): read the config the orchestrator wrote,
open the ZeroMQ context and the logger, turn SIGTERM/SIGINT into :class:`Stop`, watch for the orchestrator's
death, map the outcome to an exit code, and shut down in order (stop reacting to signals, close what the
process opened, wait for the recorder's acknowledgements, terminate the context).

A child's module calls :func:`run_child` with its config class and a ``body(cfg, child) -> exit code``; the
body holds only what that process is for. Exit codes are shared by all children and read by the
orchestrator (``orchestration.supervisor``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq
from pydantic import BaseModel

from bus.lifecycle import Stop, ignore_signals, read_config, stop_on_signals, stop_when_orphaned
from bus.log import configure_logging
from bus.messages import LogEvent
from bus.curve import curve_from_environment
from bus.transport import RecordSender

# Exit codes of every child process.
EXIT_OK = 0
EXIT_FAILED = 1  # a failure the process reported in one line (a resume may help)
EXIT_BIND_FAILED = 2  # an endpoint could not be bound
EXIT_ORPHANED = 3  # the orchestrator died; the process stopped on its own
EXIT_DATA_UNAVAILABLE = 4  # the task's data cannot be had: --resume cannot help until it is fixed
EXIT_TASK_BROKEN = 5  # the task broke its declaration (trainer.contract): its code must be fixed before a resume
EXIT_DATABASE_UNUSABLE = 65  # the recorder cannot use the database file (EX_DATAERR): restarting it cannot help
EXIT_CONFIG_INVALID = 78  # the process cannot be built from its config (EX_CONFIG), e.g. a controller's factory
#                           raised: restarting it cannot help
EXIT_INTERRUPTED = 130  # stopped by a signal

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass
class Child:
    """What the runtime gives a process body: its context, record sender (None for the recorder, which
    writes its own events), logger, and the orchestrator's pid at start. ``on_close`` callbacks run at
    shutdown, last registered first, before the sender is drained."""

    component: str
    ctx: zmq.Context
    log: Any
    sender: RecordSender | None
    parent: int = field(default_factory=os.getppid)
    on_close: list[Callable[[], None]] = field(default_factory=list)
    event_sink: Callable[[LogEvent], Any] | None = None  # without a sender (the recorder): where log events go

    def forward_event(self, event: LogEvent) -> None:
        """Hand a log event to the recorder (the sender), or to ``event_sink`` once the process sets one."""
        if self.sender is not None:
            self.sender.send(event)
        elif self.event_sink is not None:
            self.event_sink(event)

    def orphaned(self) -> bool:
        """Whether the orchestrator that started this process is gone (the parent pid the watchdog,
        :func:`bus.lifecycle.watch_parent`, also watches)."""
        return os.getppid() != self.parent

    def fail(self, message: str, code: int = EXIT_FAILED, **event) -> int:
        """Log ``<component>_failed`` with ``message``, print ``<component> failed: message`` as one line on
        stderr, and return ``code`` (for ``return child.fail(...)``)."""
        self.log.error(f"{self.component}_failed", error=message, **event)
        print(f"{self.component} failed: {message}", file=sys.stderr, flush=True)
        return code


def run_child(
    component: str,
    config_cls: type[ConfigT],
    body: Callable[[ConfigT, Child], int],
    argv: list[str] | None = None,
    run_id: Callable[[ConfigT], str | None] = lambda cfg: None,
    forward_logs: bool = True,
    drain_s: float = 10.0,
    stopped_code: int = EXIT_INTERRUPTED,
) -> int:
    """Run ``body`` as the process ``component`` with the config from ``--config``; its exit code.

    ``forward_logs``: send log events to the recorder (all but the recorder itself, which sets
    ``child.event_sink``); ``drain_s``: how long
    to wait at exit for the recorder to acknowledge what was sent (0.5 s when orphaned: it died with the
    orchestrator). :class:`Stop` (a signal) gives ``stopped_code`` (``EXIT_INTERRUPTED``; a service that is
    stopped has done its job: ``EXIT_OK``), or ``EXIT_ORPHANED`` when the orchestrator is gone.
    """
    cfg = read_config(config_cls, f"python -m {component}", f"ReflectNet {component} process", argv)
    ctx = zmq.Context()
    sender = RecordSender(ctx, cfg.recorder_endpoint, curve=curve_from_environment()) if forward_logs else None
    child = Child(component, ctx, None, sender)
    child.log = configure_logging(component, Path(cfg.run_dir) / "logs", forward=child.forward_event, run_id=run_id(cfg))
    log = child.log
    stop_on_signals()
    stop_when_orphaned(parent=child.parent)  # the same parent pid that child.orphaned() compares with
    try:
        return body(cfg, child)
    except Stop as stop:
        if child.orphaned():
            log.error("orchestrator_gone")
            return EXIT_ORPHANED
        log.info(f"{component}_stopped", signal=str(stop))
        return stopped_code
    finally:
        ignore_signals()
        for close in reversed(child.on_close):
            close()
        if sender is not None:
            lost = sender.close(timeout_s=0.5 if child.orphaned() else drain_s)
            if lost:
                print(f"{component}: {lost} message(s) not acknowledged by the recorder", file=sys.stderr, flush=True)
        ctx.term()

"""structlog set-up shared by every process: JSON lines in the run directory, and the same events on
the bus to the recorder (which stores them in the ``events`` table with component and pid)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from bus.messages import LogEvent

_RESERVED = {"event", "level", "timestamp", "component", "pid", "run_id"}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
        return value
    except (TypeError, ValueError):
        return repr(value)


def configure_logging(
    component: str,
    log_dir: Path,
    forward: Callable[[LogEvent], Any] | None = None,
    run_id: str | None = None,
) -> structlog.stdlib.BoundLogger:
    """Log JSON lines to ``log_dir/<component>-<pid>.jsonl`` and hand each event to ``forward``.

    Returns a logger bound with ``component``, ``pid`` and ``run_id``.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = log_dir / f"{component}-{pid}.jsonl"
    stream = path.open("a", buffering=1, encoding="utf-8")

    def forward_to_bus(_logger, _method, event_dict: dict) -> dict:
        if forward is not None:
            data = {k: _jsonable(v) for k, v in event_dict.items() if k not in _RESERVED}
            forward(
                LogEvent(
                    ts=time.time(),
                    run_id=event_dict.get("run_id"),
                    component=component,
                    pid=pid,
                    level=event_dict.get("level", "info"),
                    event=str(event_dict.get("event", "")),
                    data=data,
                )
            )
        return event_dict

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            forward_to_bus,
            structlog.processors.JSONRenderer(default=repr),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(component=component, pid=pid, run_id=run_id)

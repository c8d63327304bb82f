"""The progress of several arms training at once (``--jobs`` above 1): one line per live arm.

Each trainer prints one progress line per epoch (``trainer.progress``). With one arm at a time it writes to the
terminal itself; with several, the orchestrator reads every trainer's output (:meth:`ArmProgress.follow`, a thread
per trainer) and shows it: on a terminal, one line per live arm updated in place (``rich.live``, a well-kept library
rather than our own cursor handling), an arm's last line kept when it ends; elsewhere (a file, a pipe, CI) every
line as it comes, each already naming its arm.
"""

from __future__ import annotations

import sys
import threading
from typing import IO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text


class ArmProgress:
    """The live arms' latest lines on ``console`` (default: stdout's). ``live``: update in place (default: whether the
    console is a terminal)."""

    def __init__(self, live: bool | None = None, console: Console | None = None):
        self.console = console or Console(file=sys.stdout)
        self.in_place = self.console.is_terminal if live is None else live
        self.lines: dict[str, str] = {}  # run_id -> its latest line, in start order
        self.lock = threading.Lock()
        self.threads: dict[str, threading.Thread] = {}
        self.display: Live | None = None
        if self.in_place:
            self.display = Live(Group(), console=self.console, refresh_per_second=4, transient=True)
            self.display.start()

    def follow(self, run_id: str, stream: IO[bytes]) -> None:
        """Show ``run_id``'s output from ``stream`` (its trainer's stdout) until it ends."""
        with self.lock:
            self.lines[run_id] = f"{run_id}: starting"
        thread = threading.Thread(target=self._read, args=(run_id, stream), daemon=True, name=f"progress-{run_id}")
        self.threads[run_id] = thread
        thread.start()

    def _read(self, run_id: str, stream: IO[bytes]) -> None:
        try:
            self._show(run_id, stream)
        except Exception:  # a display that fails must not leave the trainer blocked on a full pipe: drain it
            for _ in stream:
                pass
        finally:
            stream.close()

    def _show(self, run_id: str, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            with self.lock:
                self.lines[run_id] = line
                if self.display is None:
                    print(line, file=self.console.file, flush=True)
                else:
                    self.display.update(self._group())

    def _group(self) -> Group:
        return Group(*(Text(line, overflow="ellipsis", no_wrap=True) for line in self.lines.values()))

    def done(self, run_id: str) -> None:
        """``run_id``'s trainer has exited: its output read to the end, its last line printed for good on a
        terminal, its line no longer live."""
        thread = self.threads.pop(run_id, None)
        if thread is not None:
            thread.join(timeout=5.0)
        with self.lock:
            last = self.lines.pop(run_id, None)
            if self.display is not None:
                if last is not None:
                    self.display.console.print(Text(last, overflow="ellipsis", no_wrap=True))
                self.display.update(self._group())

    def close(self) -> None:
        """Stop updating in place (the arms' lines stay printed)."""
        for run_id in list(self.threads):
            self.done(run_id)
        if self.display is not None:
            self.display.stop()
            self.display = None

"""The discovery files beside a database: how a process that runs on ``<db>`` tells others where to reach it.

Two processes publish one while they run: the recorder (``<db>.recorder.json``: its live-query and control
sockets, read by ``run.py sql`` / ``report``) and the orchestrator of an invocation (``<db>.invocation.json``:
its control socket and guided runs, read by ``run.py say``). Each file names its owner's pid. It is written
atomically (a reader never sees half a file), removed by its owner at a clean exit, and a file whose pid
is gone (the owner was killed) is stale: :func:`lookup` reports it as such and removes it, so a reader
says "its process has exited" at once instead of waiting for a socket that nobody serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError


class Published(BaseModel):
    """What every discovery file holds: its owner's pid, the database it runs on, since when (Unix time, s).
    Subclasses add how to reach the owner and set ``SUFFIX``, the file name's ending after the database's."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    SUFFIX: ClassVar[str] = ""

    pid: int
    db_path: str
    started_at: float


class RecorderEndpoint(Published):
    """The content of ``<db>.recorder.json``: the recorder holding the database (``storage.live``)."""

    SUFFIX: ClassVar[str] = ".recorder.json"

    query_endpoint: str
    control_endpoint: str


class InvocationEndpoint(Published):
    """The content of ``<db>.invocation.json``: the running invocation's orchestrator (``run.py say``)."""

    SUFFIX: ClassVar[str] = ".invocation.json"

    control_endpoint: str
    guided_runs: list[str]


PublishedT = TypeVar("PublishedT", bound=Published)


def discovery_file(kind: type[Published], db: Path) -> Path:
    """Where ``kind``'s owner on ``db`` publishes itself: ``<db><kind.SUFFIX>``."""
    return db.with_name(db.name + kind.SUFFIX)


def publish(info: Published) -> Path:
    """Write ``info`` beside its database atomically (a temporary file renamed over the old one); the path."""
    path = discovery_file(type(info), Path(info.db_path))
    partial = path.with_name(f"{path.name}.{info.pid}.tmp")
    partial.write_text(info.model_dump_json(indent=2))
    os.replace(partial, path)
    return path


def read_published(kind: type[PublishedT], db: Path) -> PublishedT | None:
    """The discovery file's content whoever wrote it, alive or not; None when there is none or it is unreadable."""
    try:
        return kind.model_validate_json(discovery_file(kind, db).read_text())
    except (OSError, ValidationError):
        return None


def withdraw(kind: type[Published], db: Path, pid: int) -> None:
    """Remove ``kind``'s file on ``db`` if it is still process ``pid``'s (a newer owner may have replaced it)."""
    info = read_published(kind, db)
    if info is not None and info.pid == pid:
        discovery_file(kind, db).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal test is all we have
    return state != "Z"


@dataclass(frozen=True)
class Lookup(Generic[PublishedT]):
    """What a reader found beside the database: ``info`` (None: no readable file) and whether its owner is
    ``alive``; :attr:`live` is the info to use, :meth:`why_not` a few words for an error message."""

    path: Path
    info: PublishedT | None
    alive: bool

    @property
    def live(self) -> PublishedT | None:
        """The owner's info if it is running, else None."""
        return self.info if self.alive else None

    def why_not(self) -> str:
        """Why nobody answers through this file: there is none, or its process has exited."""
        if self.info is None:
            return f"no {self.path.name}"
        if self.alive:
            return f"{self.path.name} names pid {self.info.pid}, which is running"
        return f"{self.path.name} names pid {self.info.pid}, which has exited"


def lookup(kind: type[PublishedT], db: Path) -> Lookup[PublishedT]:
    """The owner of ``kind`` running on ``db``, if any. A file published for another database (``db`` moved)
    counts as none; a stale one (its pid gone) is removed, and reported with its content."""
    path = discovery_file(kind, db)
    info = read_published(kind, db)
    if info is None or Path(info.db_path) != db.resolve():
        return Lookup(path, None, False)
    if pid_alive(info.pid):
        return Lookup(path, info, True)
    if read_published(kind, db) == info:  # not replaced meanwhile by a new owner: the dead one's file goes
        path.unlink(missing_ok=True)
    return Lookup(path, info, False)


class DatabaseBusy(Exception):
    """Another ``run.py`` invocation (training, a study) holds the database: one line for the user."""


@contextmanager
def invocation_lock(db: Path) -> Iterator[None]:
    """Hold ``<db>.lock`` while one invocation that trains into ``db`` (``run.py``, ``run.py study``) plans, trains and
    reports, so a second one started at the same moment cannot plan the same arms as not yet run (and run them
    twice) nor race the first for DuckDB's lock. The lock is the operating system's (``filelock``, ``flock`` on
    POSIX): it goes with its process, a killed one included, so a lock file left behind never blocks anyone.
    Readers (``run.py sql``, ``report``, ``say``) do not take it. Raises :class:`DatabaseBusy` when another holds it
    (naming its pid when its orchestrator has published itself)."""
    from filelock import FileLock, Timeout

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(db.with_name(db.name + ".lock")), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = read_published(InvocationEndpoint, db)
        who = f" (pid {holder.pid})" if holder is not None and pid_alive(holder.pid) else ""
        raise DatabaseBusy(f"another run.py invocation{who} is training into this database: wait for it to end, or "
                           f"use another --db (run.py sql / report / say work beside it)") from None  # fmt: skip
    try:
        yield
    finally:
        lock.release()

"""orchestration.progress: several arms' progress lines, in place on a terminal (rich), as plain lines elsewhere."""

from __future__ import annotations

import io
import os

from rich.console import Console

from orchestration.progress import ArmProgress


def arm_output(*lines: str):
    """A stream like a trainer's stdout pipe, holding ``lines``."""
    read, write = os.pipe()
    os.write(write, "".join(f"{line}\n" for line in lines).encode())
    os.close(write)
    return os.fdopen(read, "rb")


def test_without_a_terminal_every_line_is_printed_as_it_comes():
    out = io.StringIO()
    progress = ArmProgress(console=Console(file=out, force_terminal=False))
    assert not progress.in_place
    progress.follow("a", arm_output("a | epoch 1/2", "a | epoch 2/2"))
    progress.done("a")
    progress.follow("b", arm_output("b | epoch 1/1"))
    progress.close()
    assert out.getvalue().splitlines() == ["a | epoch 1/2", "a | epoch 2/2", "b | epoch 1/1"]


def test_on_a_terminal_each_live_arm_has_one_line_and_an_ended_arm_keeps_its_last():
    out = io.StringIO()
    progress = ArmProgress(console=Console(file=out, force_terminal=True, width=120))
    assert progress.in_place
    progress.follow("a", arm_output("a | epoch 1/2", "a | epoch 2/2"))
    progress.follow("b", arm_output("b | epoch 1/3"))
    progress.threads["a"].join(5)
    progress.threads["b"].join(5)
    assert progress.lines == {"a": "a | epoch 2/2", "b": "b | epoch 1/3"}  # one line each, the latest
    progress.done("a")
    assert list(progress.lines) == ["b"]
    progress.close()
    assert "a | epoch 2/2" in out.getvalue() and "b | epoch 1/3" in out.getvalue()

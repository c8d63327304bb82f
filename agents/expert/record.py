"""A reading as it is recorded and sent: :func:`reading_record` turns an ``agents.expert.reading.Reading`` into the
bus's typed :class:`~bus.messages.InstructionReading`, which travels on the ``Instruction`` to the ``instructions``
table (``read_as``, ``intent``, ``moves``, ``confidence``, ``reader``)."""

from __future__ import annotations

from dataclasses import asdict

from agents.expert.reading import Reading
from bus.messages import InstructionReading, TaskSpec


def reading_record(reading: Reading, spec: TaskSpec) -> InstructionReading:
    """``reading`` of an instruction for the task ``spec`` as recorded: the said-back line, the intent's words, its
    moves (a goal's: its moves on this task's knobs) with the fields a move does not set left out, the confidence
    and the reader."""
    intent = reading.intent
    if intent.kind == "goal":
        moves = [{"knob": knob, "direction": direction} for knob, direction in intent.goal_moves]
    else:
        moves = [{k: v for k, v in asdict(move).items() if v is not None} for move in intent.moves]
    return InstructionReading(
        read_as=reading.said_back(spec)[:2000],
        intent=intent.words()[:2000],
        moves=moves,
        confidence=min(max(float(reading.confidence), 0.0), 1.0),
        reader=reading.reader[:200],
    )

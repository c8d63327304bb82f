"""critic: the worked example of a pluggable node. It sits after validation and softens or vetoes a
risky change of any of the task's knobs, and says why in ``notes`` (stored in ``decisions.notes``).

* after a change judged harmful, a new change of a knob in the same direction as the previous change
  of that knob is vetoed (current value kept);
* a log-scale knob (a learning rate) changed by more than ``MAX_LOG_FACTOR`` is softened to the
  geometric midpoint of the current and the proposed value;
* a linear knob moves at most ``LINEAR_STEP_FRACTION`` of its grid step per epoch (MNIST's dropout: 0.05).

Add it with ``python run.py --nodes critic``. A node of your own is any function
``AgentState -> partial update``, added as ``--nodes package.module:function`` or through the
``reflectnet.nodes`` entry-point group.
"""

from __future__ import annotations

import math

from agents.state import AgentState
from agents.trends import current_values, step_digits
from bus.messages import EpochMetrics, Hyperparameter

MAX_LOG_FACTOR = 1.5
LINEAR_STEP_FRACTION = 0.5


def _note(action: str, name: str, old: float, new: float, reason: str) -> dict:
    return {"node": "critic", "action": action, "field": name, "from": old, "to": new, "reason": reason}


def vetoes(m: EpochMetrics, proposed: dict[str, float]) -> list[dict]:
    """After a harmful verdict on the previous command: a veto note for each knob that ``proposed`` moves
    in the direction the previous command moved it (relative to the epoch before it was applied)."""
    harmful = m.previous_reflection is not None and m.previous_reflection.verdict == "harmful"
    previous, history = m.previous_command, m.history
    if not harmful or previous is None or len(history) < 2:
        return []
    current, before = current_values(m), history[-2].hyperparameters
    notes = []
    for knob in m.task.hyperparameters:
        name = knob.name
        if name not in previous.hyperparameters or name not in before:
            continue
        moved = knob.direction(proposed[name], current[name])
        if moved != 0 and moved == knob.direction(previous.hyperparameters[name], before[name]):
            reason = f"the last change of {name} in this direction was judged harmful"
            notes.append(_note("veto", name, proposed[name], current[name], reason))
    return notes


def softened(knob: Hyperparameter, new: float, current: float) -> dict | None:
    """A soften note when ``new`` moves ``knob`` too far from ``current`` in one epoch, else None."""
    if knob.scale == "log":
        if current > 0 and new > 0 and abs(math.log(new / current)) > math.log(MAX_LOG_FACTOR):
            reason = f"a {knob.name} change by more than x{MAX_LOG_FACTOR} in one epoch is risky"
            return _note("soften", knob.name, new, math.sqrt(new * current), reason)
        return None
    most = LINEAR_STEP_FRACTION * knob.step
    if abs(new - current) > most:
        stepped = round(current + math.copysign(most, new - current), step_digits(knob))
        return _note("soften", knob.name, new, stepped, f"{knob.name} moves at most {most:g} per epoch")
    return None


def critic(state: AgentState) -> dict:
    """Veto, then soften, the knob changes of the validated command; approve it untouched if none is risky."""
    command = state.get("command")
    if command is None:
        return {}
    m = state["metrics"]
    current = current_values(m)
    values = {**current, **command.hyperparameters}
    notes = vetoes(m, values)
    for note in notes:
        values[note["field"]] = note["to"]
    for knob in m.task.hyperparameters:
        note = softened(knob, values[knob.name], current[knob.name])
        if note is not None:
            notes.append(note)
            values[knob.name] = note["to"]
    if not notes:
        return {"notes": [{"node": "critic", "action": "approve", "reason": "no risky change"}]}
    revised = command.model_copy(
        update={
            "hyperparameters": {name: values[name] for name in command.hyperparameters},
            "rationale": f"{command.rationale} [critic: {'; '.join(n['reason'] for n in notes)}]"[:2000],
        }
    )
    return {"notes": notes, "command": revised}

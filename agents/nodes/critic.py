"""critic: the worked example of a pluggable node. It sits after validation and softens or vetoes a
risky change, and says why in ``notes`` (stored in ``decisions.notes``).

* a learning-rate change by more than ``MAX_LR_FACTOR`` is softened to the geometric midpoint;
* a dropout change larger than ``MAX_DROPOUT_STEP`` is cut to that step;
* after a change judged harmful, a new change in the same direction is vetoed (current value kept).

Add it with ``python run.py --nodes critic``. A node of your own is any function
``AgentState -> partial update``, added as ``--nodes package.module:function`` or through the
``reflectnet.nodes`` entry-point group.
"""

from __future__ import annotations

import math

from agents.state import AgentState

MAX_LR_FACTOR = 1.5
MAX_DROPOUT_STEP = 0.05


def _direction(new: float, old: float) -> int:
    return (new > old) - (new < old)


def critic(state: AgentState) -> dict:
    command = state.get("command")
    if command is None:
        return {}
    m = state["metrics"]
    notes = []
    lr, dropout = command.learning_rate, command.dropout

    harmful = m.previous_reflection is not None and m.previous_reflection.verdict == "harmful"
    previous = m.previous_command
    history = m.history
    # What the previous command changed, relative to the epoch before it was applied.
    if harmful and previous is not None and len(history) >= 2:
        before = history[-2]
        for field, new, old, prev_new, prev_old in (
            ("learning_rate", lr, m.lr, previous.learning_rate, before.lr),
            ("dropout", dropout, m.dropout, previous.dropout, before.dropout),
        ):
            if _direction(new, old) != 0 and _direction(new, old) == _direction(prev_new, prev_old):
                notes.append(
                    {
                        "node": "critic",
                        "action": "veto",
                        "field": field,
                        "from": new,
                        "to": old,
                        "reason": f"the last change of {field} in this direction was judged harmful",
                    }
                )
                if field == "learning_rate":
                    lr = old
                else:
                    dropout = old

    if m.lr > 0 and abs(math.log(lr / m.lr)) > math.log(MAX_LR_FACTOR):
        softened = math.sqrt(lr * m.lr)
        notes.append(
            {
                "node": "critic",
                "action": "soften",
                "field": "learning_rate",
                "from": lr,
                "to": softened,
                "reason": f"a learning-rate change by more than x{MAX_LR_FACTOR} in one epoch is risky",
            }
        )
        lr = softened
    if abs(dropout - m.dropout) > MAX_DROPOUT_STEP:
        stepped = round(m.dropout + math.copysign(MAX_DROPOUT_STEP, dropout - m.dropout), 4)
        notes.append(
            {
                "node": "critic",
                "action": "soften",
                "field": "dropout",
                "from": dropout,
                "to": stepped,
                "reason": f"dropout moves at most {MAX_DROPOUT_STEP} per epoch",
            }
        )
        dropout = stepped
    if not notes:
        return {"notes": [{"node": "critic", "action": "approve", "reason": "no risky change"}]}
    revised = command.model_copy(
        update={
            "learning_rate": lr,
            "dropout": dropout,
            "rationale": f"{command.rationale} [critic: {'; '.join(n['reason'] for n in notes)}]"[:2000],
        }
    )
    return {"command": revised, "notes": notes}

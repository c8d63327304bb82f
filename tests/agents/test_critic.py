from agents.nodes.critic import critic
from bus.messages import Reflection, UpdateCommand
from tests.helpers import make_metrics


def test_small_changes_are_approved_untouched():
    command = UpdateCommand(dropout=0.25, learning_rate=8e-4, alpha=0.4)
    update = critic({"metrics": make_metrics([0.8, 0.85]), "command": command})
    assert "command" not in update and update["notes"][0]["action"] == "approve"


def test_repeating_a_harmful_change_is_vetoed():
    harmful = Reflection(epoch=3, about_epoch=2, prev_val_acc=0.85, val_acc=0.83, verdict="harmful", text="worse")
    previous = UpdateCommand(dropout=0.3, learning_rate=1e-3, alpha=0.4)
    metrics = make_metrics(
        [0.80, 0.85, 0.83],
        dropouts=[0.2, 0.2, 0.3],
        dropout=0.3,
        previous_command=previous,
        previous_reflection=harmful,
    )
    update = critic({"metrics": metrics, "command": UpdateCommand(dropout=0.33, learning_rate=1e-3, alpha=0.4)})
    assert update["command"].dropout == 0.3
    assert update["notes"][0]["action"] == "veto" and update["notes"][0]["field"] == "dropout"

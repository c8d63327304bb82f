import json

from agents.policies import HeuristicPolicy
from bus.messages import Reflection
from tests.helpers import make_metrics


def propose(metrics) -> dict:
    return json.loads(HeuristicPolicy().propose({"metrics": metrics}).text)


def test_plateau_halves_the_learning_rate():
    command = propose(make_metrics([0.90, 0.93, 0.92, 0.925]))
    assert command["learning_rate"] == 5e-4 and command["dropout"] == 0.2
    assert "plateau" in command["rationale"] and "epoch 2" in command["rationale"]


def test_widening_gap_adds_dropout():
    command = propose(make_metrics([0.80, 0.85], train_accs=[0.85, 0.95]))
    assert command["dropout"] == 0.3 and command["learning_rate"] == 1e-3
    assert "gap widened" in command["rationale"]


def test_steady_gains_keep_everything():
    command = propose(make_metrics([0.80, 0.85, 0.88], train_accs=[0.82, 0.86, 0.885]))
    assert (command["learning_rate"], command["dropout"], command["alpha"]) == (1e-3, 0.2, 0.4)
    assert command["rationale"].startswith("steady")


def test_a_harmful_verdict_holds_still_even_on_a_plateau():
    harmful = Reflection(epoch=4, about_epoch=3, prev_val_acc=0.93, val_acc=0.92, verdict="harmful", text="worse")
    command = propose(make_metrics([0.90, 0.93, 0.93, 0.92], previous_reflection=harmful))
    assert command["learning_rate"] == 1e-3 and "harmful" in command["rationale"]


def test_plateau_is_torchs_reduce_lr_on_plateau_replayed_over_the_history():
    import torch

    from agents.policies import PlateauPolicy

    # val_loss = 1 - val_acc in make_metrics: improves twice, then 3 epochs without improvement.
    val_accs = [0.80, 0.85, 0.84, 0.845, 0.83, 0.84]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2, min_lr=1e-5)
    for acc in val_accs:
        reference.step(1.0 - acc)
    command = json.loads(PlateauPolicy().propose({"metrics": make_metrics(val_accs)}).text)
    assert command["learning_rate"] == optimizer.param_groups[0]["lr"] == 5e-4
    assert (command["dropout"], command["alpha"]) == (0.2, 0.4) and "1 reduction(s)" in command["rationale"]
    assert json.loads(PlateauPolicy().propose({"metrics": make_metrics(val_accs[:4])}).text)["learning_rate"] == 1e-3

"""The best epoch's checkpoint: written beside the epoch's own when an epoch becomes the best, restored by a
rollback (weights and optimizer), refused when there is nothing earlier to return to."""

import torch

from bus.messages import EpochSummary
from tasks.diabetes import DiabetesRegression
from tests.helpers import trainer_config
from trainer.checkpoint import best_path, read_state
from trainer.process import Carry, best_held, roll_back, save_and_send


class Sender:
    def unacked(self):
        return []

    def send(self, record):
        pass


class Log:
    def __init__(self):
        self.events = []

    def __getattr__(self, level):
        return lambda event, **data: self.events.append((level, event, data))


def test_the_best_epoch_is_kept_and_a_rollback_restores_it(tmp_path):
    cfg = trainer_config(run_id="r", pair_id="p", arm="guided", controller="heuristic", task="diabetes", regime="100",
                         seed=0, epochs=5, run_dir=tmp_path, checkpoint_dir=tmp_path / "ck",
                         recorder_endpoint="ipc:///dev/null")  # fmt: skip
    task = DiabetesRegression()
    task.setup("100", 0, torch.device("cpu"))
    carry = Carry(hyperparameters=task.hyperparameter_values(), alpha=0.0)
    log, weights = Log(), {}
    for epoch, rmse in ((1, 70.0), (2, 60.0), (3, 90.0)):  # epoch 2 is the best
        task.optimizer.set_blend(0.0, {}, task.steps_per_epoch())
        task.train_epoch(epoch)
        carry.history.append(EpochSummary(epoch=epoch, metrics={"val_rmse": rmse}, hyperparameters={}, alpha=0.0))
        save_and_send(cfg, task, carry, epoch, Sender(), [])
        weights[epoch] = {k: v.clone() for k, v in task.model.state_dict().items()}
        assert best_held(cfg) == (1 if epoch == 1 else 2)
    assert best_path(cfg.checkpoint_file).name == "r.best.safetensors" and read_state(cfg.checkpoint_file).epoch == 3
    assert not all(torch.equal(weights[2][k], v) for k, v in task.model.state_dict().items())

    assert roll_back(cfg, task, carry, 3, log) == 2
    assert all(torch.equal(weights[2][k], v) for k, v in task.model.state_dict().items())
    assert ("info", "rolled_back", {"epoch": 3, "to_epoch": 2}) in log.events

    carry.history.append(EpochSummary(epoch=4, metrics={"val_rmse": 50.0}, hyperparameters={}, alpha=0.0))
    assert roll_back(cfg, task, carry, 4, log) is None  # epoch 4 is the best: nothing earlier to return to
    assert log.events[-1][:2] == ("warning", "rollback_refused")

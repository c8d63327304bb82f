"""Checkpoints: a trainer restored from one continues exactly as the one that wrote it, for any task."""

import pytest
import torch

from tasks.diabetes import DiabetesRegression
from trainer.checkpoint import CheckpointError, TrainingState, load_checkpoint, read_state, save_checkpoint

DEVICE = torch.device("cpu")


def _task(seed=0) -> DiabetesRegression:
    task = DiabetesRegression()
    task.setup("100", seed, DEVICE)
    return task


def _state(run_id="r", epoch=1) -> TrainingState:
    return TrainingState(run_id=run_id, epoch=epoch, hyperparameters={"learning_rate": 2e-3, "dropout": 0.1,
                         "weight_decay": 0.0}, alpha=0.4, last_steps=1, history=[{"epoch": 1}],
                         pending_records=[["epoch_record", "{}"]])  # fmt: skip


def test_a_restored_trainer_continues_bit_for_bit(tmp_path):
    task = _task()
    task.set_hyperparameters({"learning_rate": 2e-3, "dropout": 0.1})
    name = "net.0.weight"
    deltas = {name: torch.full_like(dict(task.model.named_parameters())[name], 1e-3)}
    task.optimizer.set_blend(0.4, deltas, task.steps_per_epoch())
    task.train_epoch(1)
    path = tmp_path / "ck" / "r.safetensors"
    save_checkpoint(path, _state(), task, deltas)
    rng_at_save = torch.get_rng_state()

    torch.manual_seed(1234)  # as in a new process
    restored = _task()  # same regime and seed; everything trained must come from the file
    loaded, restored_deltas = load_checkpoint(path, "r", restored, DEVICE)
    assert loaded == _state() and torch.equal(restored_deltas[name], deltas[name])
    assert restored.hyperparameter_values() == task.hyperparameter_values()
    assert torch.equal(torch.get_rng_state(), rng_at_save)
    for (key, a), b in zip(task.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(a, b), key

    for t, d in ((task, deltas), (restored, restored_deltas)):
        t.optimizer.set_blend(0.4, d, t.steps_per_epoch())
    first, second = task.train_epoch(2), restored.train_epoch(2)
    assert first.metrics == second.metrics  # same dropout masks, batch order, Adam moments and blend
    for (key, a), b in zip(task.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(a, b), key


def test_a_checkpoint_is_plain_safetensors_with_no_pickle(tmp_path):
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, _state(epoch=0), _task(), {})
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_len < path.stat().st_size  # JSON header, then raw tensors
    assert b"\x80\x04" not in path.read_bytes()[: 8 + header_len]  # no pickle protocol marker in the header
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_bad_checkpoints_are_refused_with_a_reason(tmp_path):
    task = _task()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state(tmp_path / "junk.safetensors")
    path = tmp_path / "a.safetensors"
    save_checkpoint(path, _state(run_id="a", epoch=2), task, {})
    with pytest.raises(CheckpointError, match="belongs to run 'a', not 'b'"):
        load_checkpoint(path, "b", task, DEVICE)
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(CheckpointError):
        read_state(path)


def test_an_old_format_or_another_tasks_checkpoint_is_refused_not_a_traceback(tmp_path):
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({"x": torch.zeros(1)}, str(old), metadata={"format": "reflectnet-checkpoint-1", "state": "{}"})
    with pytest.raises(CheckpointError, match="older ReflectNet"):
        read_state(old)
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, _state(), _task(seed=0), {})
    with pytest.raises(CheckpointError, match="does not fit this task: ValueError: checkpoint is for regime '100' seed 0"):
        load_checkpoint(path, "r", _task(seed=1), DEVICE)

"""Checkpoints: a trainer restored from one continues exactly as the one that wrote it."""

import pytest
import torch

from trainer.checkpoint import CheckpointError, TrainingState, load_checkpoint, read_state, save_checkpoint
from trainer.loop import make_optimizer, to_model_input, train_epoch
from trainer.model import ReflectCNN

DEVICE = torch.device("cpu")


def _setup(seed=0):
    torch.manual_seed(seed)
    model = ReflectCNN(0.3).to(memory_format=torch.channels_last)
    return model, make_optimizer(model, 1e-3), torch.Generator().manual_seed(seed)


def _data():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(96, 28, 28, generator=g)
    return to_model_input((images * 255).to(torch.uint8), DEVICE), torch.randint(0, 10, (96,), generator=g)


def test_a_restored_trainer_continues_bit_for_bit(tmp_path):
    x, y = _data()
    model, optimizer, order = _setup()
    deltas = {"fc.3.weight": torch.full((10, 128), 1e-3)}
    train_epoch(model, optimizer, x, y, 32, order, 0.4, deltas)
    state = TrainingState(run_id="r", epoch=1, lr=1e-3, dropout=0.3, alpha=0.4, history=[{"epoch": 1}],
                          pending_records=[["epoch_record", "{}"]])  # fmt: skip
    path = tmp_path / "ck" / "r.safetensors"
    save_checkpoint(path, state, model, optimizer, deltas, order)
    rng_at_save = torch.get_rng_state()

    torch.manual_seed(1234)  # as in a new process
    restored, restored_opt, restored_order = _setup(seed=99)  # different init: everything must come from the file
    loaded, restored_deltas = load_checkpoint(path, "r", restored, restored_opt, restored_order, DEVICE)
    assert loaded == state and torch.equal(restored_deltas["fc.3.weight"], deltas["fc.3.weight"])
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name

    assert torch.equal(torch.get_rng_state(), rng_at_save)  # dropout masks continue where they were
    first = train_epoch(model, optimizer, x, y, 32, order, 0.4, deltas)
    torch.set_rng_state(rng_at_save)  # both continuations start from the checkpoint's RNG
    second = train_epoch(restored, restored_opt, x, y, 32, restored_order, 0.4, restored_deltas)
    assert first.loss == second.loss and first.acc == second.acc
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name  # same dropout masks, batch order and Adam moments


def test_a_checkpoint_is_plain_safetensors_with_no_pickle(tmp_path):
    model, optimizer, order = _setup()
    path = tmp_path / "r.safetensors"
    save_checkpoint(
        path, TrainingState(run_id="r", epoch=0, lr=1e-3, dropout=0.3, alpha=0.4), model, optimizer, {}, order
    )
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_len < path.stat().st_size  # JSON header, then raw tensors
    assert b"\x80\x04" not in path.read_bytes()[: 8 + header_len]  # no pickle protocol marker in the header
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_bad_checkpoints_are_refused_with_a_reason(tmp_path):
    model, optimizer, order = _setup()
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_state(tmp_path / "junk.safetensors")
    path = tmp_path / "a.safetensors"
    save_checkpoint(
        path, TrainingState(run_id="a", epoch=2, lr=1e-3, dropout=0.3, alpha=0.4), model, optimizer, {}, order
    )
    with pytest.raises(CheckpointError, match="belongs to run 'a', not 'b'"):
        load_checkpoint(path, "b", model, optimizer, order, DEVICE)
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(CheckpointError):
        read_state(path)


def test_a_checkpoint_of_another_model_is_refused_not_a_traceback(tmp_path):
    other = torch.nn.Linear(3, 2)
    path = tmp_path / "r.safetensors"
    save_checkpoint(path, TrainingState(run_id="r", epoch=1, lr=1e-3, dropout=0.3, alpha=0.4), other,
                    torch.optim.Adam(other.parameters()), {}, torch.Generator())  # fmt: skip
    model, optimizer, order = _setup()
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(path, "r", model, optimizer, order, DEVICE)

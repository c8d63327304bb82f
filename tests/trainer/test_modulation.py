import pytest
import torch

from bus.messages import UpdateCommand, WeightOp
from tasks.mnist.model import ReflectCNN
from trainer.modulation import deltas_from_command


def command(**kw) -> UpdateCommand:
    return UpdateCommand(hyperparameters={"dropout": 0.2, "learning_rate": 1e-3}, alpha=0.5, **kw)


def test_compact_operations_expand_to_exact_shape_deltas_within_the_cap():
    torch.manual_seed(0)
    model = ReflectCNN()
    w = model.fc[3].weight.detach().clone()
    ops = [
        WeightOp(layer="fc.3.weight", op="scale", value=0.98),
        WeightOp(layer="fc.0.weight", op="shrink", value=0.01),
        WeightOp(layer="conv.0.weight", op="noise", value=0.02, seed=7),
    ]
    deltas = deltas_from_command(command(weight_ops=ops), model)
    assert torch.allclose(deltas["fc.3.weight"], -0.02 * w)
    assert torch.allclose(deltas["fc.0.weight"], -0.01 * model.fc[0].weight)
    noise = deltas["conv.0.weight"]
    assert noise.shape == model.conv[0].weight.shape
    assert noise.norm().item() == pytest.approx(0.02 * model.conv[0].weight.norm().item(), rel=1e-5)
    again = deltas_from_command(command(weight_ops=ops[2:]), model)["conv.0.weight"]
    assert torch.equal(noise, again)  # same seed, same noise: a replay reproduces it


def test_raw_deltas_are_checked_again_by_the_trainer():
    model = ReflectCNN()
    good = deltas_from_command(command(weight_modulation={"fc.3.bias": [0.1] * 10}), model)
    assert torch.allclose(good["fc.3.bias"], torch.full((10,), 0.1))
    with pytest.raises(ValueError, match="has shape \\[9\\], parameter has \\[10\\]"):
        deltas_from_command(command(weight_modulation={"fc.3.bias": [0.1] * 9}), model)
    with pytest.raises(ValueError, match="unknown parameter 'fc.9.bias'"):
        deltas_from_command(command(weight_modulation={"fc.9.bias": [0.1]}), model)
    with pytest.raises(ValueError, match="cap 0.05"):
        deltas_from_command(command(weight_ops=[WeightOp(layer="fc.3.weight", op="shrink", value=0.5)]), model)

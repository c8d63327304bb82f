import copy

import pytest
import torch

from trainer.blend import BlendedOptimizer, blend_step
from tasks.mnist.loop import train_epoch
from tasks.mnist.model import ReflectCNN


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = ReflectCNN(dropout=0.0)
    x = torch.randn(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    return model, x, y


def _backward(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()


def test_alpha_zero_without_delta_is_exactly_plain_adam():
    plain, x, y = _model_and_batch()
    blended = copy.deepcopy(plain)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3)
    opt_blend = torch.optim.Adam(blended.parameters(), lr=1e-3)
    params = dict(blended.named_parameters())
    for _ in range(5):
        _backward(plain, x, y)
        opt_plain.step()
        _backward(blended, x, y)
        blend_step(opt_blend, params, alpha=0.0, step_deltas={})
    for (name, a), b in zip(plain.named_parameters(), blended.parameters()):
        assert torch.equal(a, b), name


def test_alpha_one_applies_only_the_delta():
    model, x, y = _model_and_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    delta = torch.full_like(params["fc.3.weight"], 0.01)
    _backward(model, x, y)
    blend_step(opt, params, alpha=1.0, step_deltas={"fc.3.weight": delta})
    assert torch.allclose(params["fc.3.weight"], before["fc.3.weight"] + delta, atol=1e-7)
    # Parameters without a delta take Adam's plain step, so they did move.
    assert not torch.equal(params["fc.0.weight"], before["fc.0.weight"])


def test_partial_alpha_blends_adam_step_and_delta():
    model, x, y = _model_and_batch()
    reference = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-2)
    params = dict(model.named_parameters())
    before = params["fc.3.weight"].detach().clone()
    delta = torch.randn_like(before) * 0.01
    _backward(model, x, y)
    _backward(reference, x, y)
    opt_ref.step()
    adam_step = dict(reference.named_parameters())["fc.3.weight"].detach() - before
    blend_step(opt, params, alpha=0.4, step_deltas={"fc.3.weight": delta})
    expected = before + 0.6 * adam_step + 0.4 * delta
    assert torch.allclose(params["fc.3.weight"], expected, atol=1e-7)


def test_epoch_delta_is_spread_over_steps_and_sums_to_alpha_times_delta():
    torch.manual_seed(0)
    model = ReflectCNN(dropout=0.0)
    images, labels = torch.randn(100, 1, 28, 28), torch.randint(0, 10, (100,))
    opt = BlendedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), dict(model.named_parameters()))
    before = model.fc[3].weight.detach().clone()
    delta = torch.randn_like(before) * 0.05
    opt.set_blend(1.0, {"fc.3.weight": delta}, steps_per_epoch=4)
    stats = train_epoch(model, opt, images, labels, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert stats.steps == 4
    # alpha = 1 discards Adam's step for that layer, so the epoch moved it by exactly the delta.
    assert torch.allclose(model.fc[3].weight, before + delta, atol=1e-6)


def test_the_optimizer_wrapper_spreads_an_epoch_delta_over_its_steps_like_blend_step():
    direct, x, y = _model_and_batch()
    wrapped = copy.deepcopy(direct)
    opt_direct = torch.optim.Adam(direct.parameters(), lr=1e-3)
    opt_wrapped = BlendedOptimizer(torch.optim.Adam(wrapped.parameters(), lr=1e-3), dict(wrapped.named_parameters()))
    delta = torch.full_like(direct.fc[3].weight, 0.01)
    opt_wrapped.set_blend(0.5, {"fc.3.weight": delta}, steps_per_epoch=4)
    params = dict(direct.named_parameters())
    for _ in range(4):
        _backward(direct, x, y)
        blend_step(opt_direct, params, 0.5, {"fc.3.weight": delta / 4})
        _backward(wrapped, x, y)
        opt_wrapped.step()
    for (name, a), b in zip(direct.named_parameters(), wrapped.parameters()):
        assert torch.equal(a, b), name
    assert opt_wrapped.param_groups is opt_wrapped.inner.param_groups  # a library setting the lr reaches Adam
    assert opt_wrapped.state_dict()["state"].keys() == opt_direct.state_dict()["state"].keys()


def test_the_optimizer_wrapper_refuses_what_it_cannot_blend():
    model, _, _ = _model_and_batch()
    opt = BlendedOptimizer(torch.optim.Adam(model.parameters()), dict(model.named_parameters()))
    for kwargs, message in [
        ({"alpha": 1.5, "epoch_deltas": {}, "steps_per_epoch": 1}, "alpha must be in"),
        ({"alpha": 0.5, "epoch_deltas": {"nope": torch.zeros(1)}, "steps_per_epoch": 1}, "no parameter 'nope'"),
        ({"alpha": 0.5, "epoch_deltas": {"fc.3.bias": torch.zeros(3)}, "steps_per_epoch": 1}, "has shape"),
        ({"alpha": 0.5, "epoch_deltas": {}, "steps_per_epoch": 0}, "steps_per_epoch must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            opt.set_blend(**kwargs)
    with pytest.raises(TypeError, match="closure"):
        opt.step(lambda: 0.0)

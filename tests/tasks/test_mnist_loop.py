"""The compiled validation forward: no recompiles when dropout or alpha change, a recorded eager fallback."""

import pytest
import torch
from torch._dynamo.utils import counters

from tasks.mnist.loop import CompiledEval, compile_for_eval, evaluate, make_optimizer, train_epoch
from tasks.mnist.model import ReflectCNN
from trainer.blend import BlendedOptimizer

EVAL_BATCH = 100  # a small validation batch keeps compiling and evaluating cheap; the graph is the same


@pytest.fixture
def setup():
    """A model, its optimizer and seeded random train (64) and validation (300) images."""
    torch.manual_seed(0)
    model = ReflectCNN(0.2).to(memory_format=torch.channels_last)
    images = torch.randn(364, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (364,))
    optimizer = BlendedOptimizer(make_optimizer(model, 1e-3), dict(model.named_parameters()))
    return model, optimizer, (images[:64], labels[:64]), (images[64:], labels[64:])


def test_dropout_and_alpha_changes_do_not_recompile_validation(setup):
    model, optimizer, (train_x, train_y), (val_x, val_y) = setup
    fallbacks: list[str] = []
    forward, failure = compile_for_eval(model, val_x[:EVAL_BATCH], on_fallback=fallbacks.append)
    assert failure is None and isinstance(forward, CompiledEval)
    generator = torch.Generator().manual_seed(0)
    frames_before = counters["frames"]["ok"]

    dropouts = [0.2, 0.5, 0.25, 0.3, 0.35, 0.4, 0.45, 0.0, 0.1, 0.6, 0.7]
    alphas = [0.4, 0.0, 0.5, 1.0, 0.2, 0.4, 0.3, 0.1, 0.9, 0.6, 0.8]
    for dropout, alpha in zip(dropouts, alphas, strict=True):
        model.dropout = dropout
        optimizer.set_blend(alpha, {"fc.3.weight": torch.full((10, 128), 1e-3)}, 2)
        train_epoch(model, optimizer, train_x, train_y, 32, generator)
        compiled = evaluate(model, val_x, val_y, batch_size=EVAL_BATCH, forward=forward)
        eager = evaluate(model, val_x, val_y, batch_size=EVAL_BATCH)
        assert (compiled.loss, compiled.acc, compiled.per_class_acc) == (eager.loss, eager.acc, eager.per_class_acc)

    assert counters["frames"]["ok"] - frames_before == 0  # dynamo converted no frame: no recompile
    assert (forward.recompiles, forward.fallback_reason, fallbacks) == (0, None, [])


def test_dropout_trains_as_nn_dropout_and_is_the_identity_in_eval(setup):
    model = setup[0]
    x = torch.randn(8, 3136)
    reference = torch.nn.Sequential(*[torch.nn.Dropout(0.3) if i == 2 else m for i, m in enumerate(model.fc)])
    model.dropout = 0.3
    torch.manual_seed(5)
    ours = model.fc(x)
    torch.manual_seed(5)
    assert torch.equal(ours, reference(x))  # same masks from the same RNG state
    model.eval()
    assert torch.equal(model.fc[2](x), x)


def test_recompile_limit_hit_falls_back_to_eager_and_is_reported_once(setup):
    model, _, _, (val_x, _) = setup
    torch._dynamo.reset()  # the code cache is per code object: start this count from zero
    fallbacks: list[str] = []
    forward, failure = compile_for_eval(model, val_x[:EVAL_BATCH], on_fallback=fallbacks.append)
    assert failure is None
    model.eval()
    with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=1):
        # the graph is specialised to the batch size: another size needs a second graph, over the limit
        logits = forward(val_x[:7])
        again = forward(val_x[:9])
    assert torch.equal(logits, model(val_x[:7])) and torch.equal(again, model(val_x[:9]))
    assert len(fallbacks) == 1 and fallbacks[0].startswith("FailOnRecompileLimitHit")
    assert forward.fallback_reason == fallbacks[0]
    torch._dynamo.reset()

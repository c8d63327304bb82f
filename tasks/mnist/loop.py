"""The MNIST task's training epoch and validation pass, over tensors already on the device.

Both functions take their dependencies as arguments (pytorch/examples style) and return plain
statistics; ``tasks.mnist.task.MnistTask`` decides what to do with them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from tasks.mnist.data import NUM_CLASSES

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalized float [N, 1, 28, 28] on ``device``, channels_last.

    Done once per data set, never per batch. channels_last is the faster conv layout on CPU.
    """
    x = images.to(device=device, dtype=torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1).contiguous(memory_format=torch.channels_last)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with its fused kernel where this torch has one for the device (CPU and CUDA in torch
    >= 2.4): one kernel for all parameters instead of a Python loop over them."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except RuntimeError:
        return torch.optim.Adam(model.parameters(), lr=lr)


@dataclass(frozen=True)
class TrainStats:
    loss: float
    acc: float  # running accuracy over the epoch's batches, with dropout active
    steps: int
    grad_norms: dict[str, float]  # mean over the epoch's steps of each parameter's gradient L2 norm


@dataclass(frozen=True)
class EvalStats:
    loss: float
    acc: float
    per_class_acc: list[float]


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> TrainStats:
    """Train one pass over ``images`` [N, 1, 28, 28] in a seeded random order (``generator``).

    ``optimizer`` is usually a :class:`trainer.blend.BlendedOptimizer`: its ``step`` applies the epoch's
    weight modulation (``set_blend``) blended with Adam's step.
    """
    model.train()
    n = len(images)
    steps = (n + batch_size - 1) // batch_size
    params = dict(model.named_parameters())
    order = torch.randperm(n, generator=generator).to(images.device)
    # Sums stay on the device; one synchronisation at the end of the epoch, not one per step.
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    grad_norm_sum = torch.zeros(len(params), device=images.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x, y = images[idx], labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm_sum += torch.stack(torch._foreach_norm([p.grad for p in params.values()]))
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    grad_means = (grad_norm_sum / steps).tolist()
    return TrainStats(
        loss=loss_sum.item() / n,
        acc=correct.item() / n,
        steps=steps,
        grad_norms=dict(zip(params, grad_means)),
    )


EVAL_BATCH = 1000


class CompiledEval:
    """The ``torch.compile``d validation forward that runs the eager model instead, for good, once dynamo
    gives up on it, and says so once through ``on_fallback(reason)``.

    Dynamo's own fallback is silent: after ``torch._dynamo.config.recompile_limit`` recompiles it just
    runs the frame eager. Each call here sets ``fail_on_recompile_limit_hit`` so hitting the limit
    raises instead, and a recompile that fails to compile raises too; both switch to ``model``.
    ``recompiles`` counts the graphs compiled after the first (0 when nothing the guards check changes:
    dropout and alpha do not, see ``tasks.mnist.model.TrainOnlyDropout``).
    """

    def __init__(self, model: torch.nn.Module, compiled: Callable, on_fallback: Callable[[str], None] | None = None):
        # torch._dynamo costs seconds to import; only a compiled validation pass needs it.
        from torch._dynamo.exc import FailOnRecompileLimitHit, TorchDynamoException
        from torch._dynamo.utils import counters

        self._gave_up = (FailOnRecompileLimitHit, TorchDynamoException)
        self._counters = counters
        self.model = model
        self.compiled = compiled
        self.on_fallback = on_fallback
        self.recompiles = 0
        self.fallback_reason: str | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, 10] for normalized images [B, 1, 28, 28], B the example's batch size."""
        if self.fallback_reason is not None:
            return self.model(images)
        frames_compiled = self._counters["frames"]["ok"]  # dynamo's count of frames it converted, process-wide
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                logits = self.compiled(images)
        except self._gave_up as exc:
            self.fallback_reason = _one_line(exc)
            if self.on_fallback is not None:
                self.on_fallback(self.fallback_reason)
            return self.model(images)
        self.recompiles += self._counters["frames"]["ok"] - frames_compiled
        return logits


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def compile_for_eval(
    model: torch.nn.Module, example: torch.Tensor, on_fallback: Callable[[str], None] | None = None
) -> tuple[Callable, str | None]:
    """The model's forward compiled with ``torch.compile`` for the validation pass (a
    :class:`CompiledEval`), or the model itself (and why) when compiling is not possible here.

    Measured on 2 CPU cores: the 10,000-image pass takes 1.1 s compiled vs 1.8 s eager channels_last
    and 3.1 s for a plain NCHW loop; compiling costs ~20 s once per machine (cached on disk after) and
    ~1.5 s per process. The weights stay inputs of the compiled graph, so training updates are seen.
    ``example`` must have the evaluation batch's shape (the graph is specialised to it). If dynamo later
    gives up (recompile limit, a failing recompile), validation runs eager and ``on_fallback(reason)``
    is called once, for the caller to record.
    """
    # A CPU-only machine makes torch's C++ builder warn about a missing CUDA runtime on stderr; that is
    # noise on the user's terminal, not a problem (it still goes to the logs if it fails).
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(model, dynamic=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            compiled(example)  # compile now, not inside the first epoch's timing
    except Exception as exc:  # inductor can fail in many ways (no C compiler, odd platform): run eager
        return model, _one_line(exc)
    finally:
        model.train(was_training)
    return CompiledEval(model, compiled, on_fallback), None


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalStats:
    """Loss, accuracy and per-class accuracy over the whole set (dropout off).

    ``forward`` is the model's forward to use (e.g. from :func:`compile_for_eval`); default the model.
    """
    model.eval()
    forward = model if forward is None else forward
    loss_sum = torch.zeros((), device=images.device)
    hits = torch.zeros(NUM_CLASSES, device=images.device)
    totals = torch.zeros(NUM_CLASSES, device=images.device)
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = forward(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        totals += torch.bincount(y, minlength=NUM_CLASSES)
        hits += torch.bincount(y[logits.argmax(1) == y], minlength=NUM_CLASSES)
    per_class = (hits / totals.clamp(min=1)).tolist()
    return EvalStats(loss=loss_sum.item() / len(images), acc=hits.sum().item() / len(images), per_class_acc=per_class)

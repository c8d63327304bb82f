"""One training epoch and one validation pass, over tensors already on the device.

Both functions take their dependencies as arguments (pytorch/examples style) and return plain
statistics; the process module decides what to do with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.blend import blend_step
from trainer.data import NUM_CLASSES

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def to_model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 [N, 28, 28] -> normalized float [N, 1, 28, 28] on ``device``, channels_last.

    Done once per data set, never per batch. channels_last is the faster conv layout on CPU.
    """
    x = images.to(device=device, dtype=torch.float32).div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1).contiguous(memory_format=torch.channels_last)


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
    alpha: float = 0.0,
    epoch_deltas: dict[str, torch.Tensor] | None = None,
) -> TrainStats:
    """Train one pass over ``images`` in a seeded random order.

    ``epoch_deltas`` are whole-epoch weight modulations; each step applies ``delta / steps``.
    """
    model.train()
    n = len(images)
    steps = (n + batch_size - 1) // batch_size
    params = dict(model.named_parameters())
    step_deltas = {name: d / steps for name, d in (epoch_deltas or {}).items()}
    order = torch.randperm(n, generator=generator).to(images.device)
    # Sums stay on the device; one synchronisation at the end of the epoch, not one per step.
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    grad_sq = torch.zeros(len(params), device=images.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x, y = images[idx], labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_sq += torch.stack([p.grad.norm() for p in params.values()])
        blend_step(optimizer, params, alpha, step_deltas)
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    grad_means = (grad_sq / steps).tolist()
    return TrainStats(
        loss=loss_sum.item() / n,
        acc=correct.item() / n,
        steps=steps,
        grad_norms=dict(zip(params, grad_means)),
    )


@torch.inference_mode()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> EvalStats:
    """Loss, accuracy and per-class accuracy over the whole set (dropout off)."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    hits = torch.zeros(NUM_CLASSES, device=images.device)
    totals = torch.zeros(NUM_CLASSES, device=images.device)
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        totals += torch.bincount(y, minlength=NUM_CLASSES)
        hits += torch.bincount(y[logits.argmax(1) == y], minlength=NUM_CLASSES)
    per_class = (hits / totals.clamp(min=1)).tolist()
    return EvalStats(loss=loss_sum.item() / len(images), acc=hits.sum().item() / len(images), per_class_acc=per_class)


def weight_norms(model: torch.nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return {name: p.norm().item() for name, p in model.named_parameters()}

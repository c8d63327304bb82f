"""The diabetes task's network: an MLP whose dropout draws its masks from its own generator."""

from __future__ import annotations

import torch

from tasks.diabetes.data import NUM_FEATURES


class SeededDropout(torch.nn.Dropout):
    """Inverted dropout whose masks come from its own ``torch.Generator``, not the global RNG, so a run is
    reproducible and resumable from the task's own state whatever else draws random numbers in the process.

    ``p`` is read at every forward, so setting it takes effect at the next batch.
    """

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p >= 1.0:
            return torch.zeros_like(x)
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def make_mlp(width: int, depth: int, dropout: float, generator: torch.Generator) -> torch.nn.Sequential:
    """10 → width (→ width)^(depth−1) → 1, ReLU then dropout after each hidden layer.

    Parameter names are stable: with depth 2, ``net.0`` (10→w), ``net.3`` (w→w), ``net.6`` (w→1),
    ``.weight``/``.bias``; PyTorch's default Linear initialisation (Kaiming-uniform).
    """
    layers: list[torch.nn.Module] = []
    fan_in = NUM_FEATURES
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU(), SeededDropout(dropout, generator)]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    return torch.nn.Sequential(*layers)


class Regressor(torch.nn.Module):
    """Holds the MLP as ``net`` so parameter names read ``net.0.weight`` ...; [B, 10] → [B]."""

    def __init__(self, net: torch.nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

"""The paper's CNN (section 2.2): two conv layers with ReLU and max-pooling, a fully connected layer
with ReLU and dropout, and a classification layer.

Parameter names are a public contract: the agent addresses layers by them (``fc.3.weight`` is the
classification layer, as in the paper's example command).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TrainOnlyDropout(nn.Dropout):
    """``nn.Dropout`` whose eval-mode forward is the identity without reading ``p``.

    ``nn.Dropout.forward`` hands ``self.p`` to ``F.dropout`` even in eval mode, so ``torch.compile``
    specialises the compiled validation forward on ``p``: every dropout value the agent sets cost a
    recompile (~0.5 s on 2 cores), and after ``torch._dynamo.config.recompile_limit`` (8) of them the
    validation pass ran eager. Training runs the very same ``F.dropout`` call (same masks, same RNG use).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return input
        return F.dropout(input, self.p, True, self.inplace)


class ReflectCNN(nn.Module):
    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),  # [B, 32, 28, 28]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 32, 14, 14]
            nn.Conv2d(32, 64, kernel_size=3, padding=1),  # [B, 64, 14, 14]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 64, 7, 7]
        )
        self.fc = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128),  # fc.0
            nn.ReLU(),
            TrainOnlyDropout(dropout),  # fc.2: the dropout the agent sets; no parameters
            nn.Linear(128, 10),  # fc.3: logits
        )

    @property
    def dropout(self) -> float:
        return self.fc[2].p

    @dropout.setter
    def dropout(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p=}")
        self.fc[2].p = p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: [B, 1, 28, 28] normalized floats -> logits [B, 10]
        return self.fc(torch.flatten(self.conv(images), 1))

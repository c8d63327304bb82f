"""The paper's CNN (section 2.2): two conv layers with ReLU and max-pooling, a fully connected layer
with ReLU and dropout, and a classification layer.

Parameter names are a public contract: the agent addresses layers by them (``fc.3.weight`` is the
classification layer, as in the paper's example command).
"""

from __future__ import annotations

import torch
from torch import nn


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
            nn.Dropout(dropout),  # fc.2: the dropout the agent sets
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

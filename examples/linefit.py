"""A task written outside ReflectNet, in one file: least-squares regression y = X w + noise on 64 synthetic examples
of ``width`` features, fitted by SGD; one knob, the learning rate.

Nothing of ReflectNet is edited to run it. With the repository root on ``PYTHONPATH``::

    python run.py --task examples.linefit:LineFit --controller heuristic

or copy this file anywhere on ``PYTHONPATH`` and name it ``<module>:LineFit`` (or ``<module>:make_task``, a
factory whose keyword arguments are the task's options: ``--task-option width=4``).
"""

from __future__ import annotations

import torch

from tasks.base import EpochResult, Hyperparameter, Task, cpu_copy
from trainer.blend import BlendedOptimizer

BATCHES = 4  # optimizer steps per epoch: the 64 examples in 4 batches of 16, in a fixed order


class LineFit(Task):
    """SGD fits ``torch.nn.Linear(width, 1)`` to 64 examples; objective ``val_mse`` (min), measured on the same 64
    examples after the epoch (a toy: there is nothing to overfit)."""

    name = "linefit"
    description = "SGD fits a linear model to 64 noisy synthetic examples of 4 features."
    objective = "val_mse"
    mode = "min"
    noise_band = 1e-4
    regimes = {"small": 64}
    default_regime = "small"
    default_epochs = 4
    hyperparameters = (
        Hyperparameter(name="learning_rate", default=0.05, low=1e-4, high=0.5, scale="log", step=2.0,
                       max_change=3.0, description="SGD step size", family="learning_rate", aliases=("lr",)),
    )  # fmt: skip

    def __init__(self, width: int = 4):
        if width < 1:
            raise ValueError(f"width must be positive, got {width=}")
        self.width = width

    def setup(self, regime: str, seed: int, device: torch.device) -> None:
        if regime not in self.regimes:
            raise ValueError(f"unknown regime {regime!r} for task {self.name!r}; known: {list(self.regimes)}")
        self.regime, self.seed = regime, seed
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.width, 1, generator=g)
        self.x = torch.randn(self.regimes[regime], self.width, generator=g)  # [64, width]
        self.y = self.x @ w + 0.1 * torch.randn(self.regimes[regime], 1, generator=g)  # [64, 1]
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(self.width, 1)
        sgd = torch.optim.SGD(self.net.parameters(), lr=self.hyperparameters[0].default)
        self.opt = BlendedOptimizer(sgd, dict(self.net.named_parameters()))

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    @property
    def optimizer(self) -> BlendedOptimizer:
        return self.opt

    def steps_per_epoch(self) -> int:
        return BATCHES

    def train_epoch(self, epoch: int) -> EpochResult:
        size = len(self.x) // BATCHES
        for i in range(BATCHES):
            xb, yb = self.x[i * size : (i + 1) * size], self.y[i * size : (i + 1) * size]
            loss = torch.nn.functional.mse_loss(self.net(xb), yb)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(self.net(self.x), self.y).item()
        return EpochResult({"train_mse": mse, "val_mse": mse}, steps=BATCHES)

    def hyperparameter_values(self) -> dict[str, float]:
        return {"learning_rate": self.opt.param_groups[0]["lr"]}

    def set_hyperparameters(self, values: dict[str, float]) -> None:
        for group in self.opt.param_groups:
            group["lr"] = values.get("learning_rate", group["lr"])

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The weights (plain SGD keeps no state of its own) and the knob values."""
        return {f"model.{k}": cpu_copy(v) for k, v in self.net.state_dict().items()}, self.hyperparameter_values()

    def restore_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.net.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()})
        self.set_hyperparameters(meta)


def make_task(width: int = 4) -> LineFit:
    """The task as a factory: its keyword arguments are the options ``--task-option`` may set."""
    return LineFit(width=width)

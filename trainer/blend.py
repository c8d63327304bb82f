"""The alpha-blended update (paper 2.3; ARCHITECTURE.md):

    param += (1 - alpha) * optimizer_step + alpha * delta

``optimizer_step`` is the change the optimizer (Adam) would make on its own. A parameter with no
delta takes the plain optimizer step: the paper's "if no delta is provided, the update defaults to
traditional gradient descent". Alpha therefore weighs a modulation against the optimizer; it never
silently shrinks the learning rate of layers the agent did not touch.

A command's delta is per *epoch*: the trainer passes ``delta / steps_per_epoch`` to every step, so an
epoch adds ``alpha * delta`` in total, spread out instead of one jump at the boundary. With
``alpha = 1`` the optimizer's step is discarded for that parameter (Adam's moment estimates still
advance, since it saw the gradient).
"""

from __future__ import annotations

import torch


def blend_step(
    optimizer: torch.optim.Optimizer,
    params: dict[str, torch.nn.Parameter],
    alpha: float,
    step_deltas: dict[str, torch.Tensor],
) -> None:
    """Run ``optimizer.step()`` and blend its update with ``step_deltas`` for the named parameters."""
    if not step_deltas:
        optimizer.step()
        return
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha=}")
    with torch.no_grad():
        before = {name: params[name].detach().clone() for name in step_deltas}
    optimizer.step()
    with torch.no_grad():
        for name, delta in step_deltas.items():
            param = params[name]
            # param currently = before + step, so the blend is before + (1-a)*step + a*delta.
            optimizer_step = param - before[name]
            param.copy_(before[name] + (1.0 - alpha) * optimizer_step + alpha * delta)


class BlendedOptimizer:
    """Any ``torch.optim.Optimizer`` with the alpha-blended step: each ``step()`` runs the wrapped
    optimizer and, for the named parameters with a delta, blends as :func:`blend_step` does.

    It stands in wherever an optimizer is used — a hand-written loop, or a library's (Stable-Baselines3
    calls ``zero_grad``, ``step`` and sets ``param_groups[i]["lr"]``). The wrapped optimizer's state is
    the only state (``state_dict``/``load_state_dict`` delegate); alpha and deltas are the agent's
    knobs, set per epoch with :meth:`set_blend` and checkpointed by the caller.
    """

    def __init__(self, inner: torch.optim.Optimizer, named_params: dict[str, torch.nn.Parameter]):
        self.inner = inner
        self.params = dict(named_params)
        self.alpha = 0.0
        self.step_deltas: dict[str, torch.Tensor] = {}

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self) -> dict:
        return self.inner.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)

    def step(self, closure=None) -> None:
        """One blended step; a closure (L-BFGS style re-evaluation) has no meaning in a blend: TypeError."""
        if closure is not None:
            raise TypeError("BlendedOptimizer.step takes no closure: the blend needs the optimizer's single step")
        blend_step(self.inner, self.params, self.alpha, self.step_deltas)

    def set_blend(self, alpha: float, epoch_deltas: dict[str, torch.Tensor], steps_per_epoch: int) -> None:
        """Blend ``epoch_deltas`` (whole-epoch deltas by parameter name, exact shapes) over the next
        ``steps_per_epoch`` steps: each step adds ``delta / steps_per_epoch``, the epoch ``alpha * delta``.
        Raises ValueError for alpha outside [0, 1], an unknown name, a wrong shape or steps < 1."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha=}")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch=}")
        for name, delta in epoch_deltas.items():
            if name not in self.params:
                raise ValueError(f"no parameter {name!r} to modulate")
            if delta.shape != self.params[name].shape:
                raise ValueError(
                    f"delta for {name!r} has shape {tuple(delta.shape)}, the parameter {tuple(self.params[name].shape)}"
                )
        self.alpha = alpha
        self.step_deltas = {name: delta / steps_per_epoch for name, delta in epoch_deltas.items()}

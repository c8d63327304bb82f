"""The alpha-blended update (paper 2.3, DESIGN.md):

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

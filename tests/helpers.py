"""Builders for agent-side tests."""

from __future__ import annotations

from bus.messages import EpochMetrics, EpochSummary, Reflection, UpdateCommand

PARAM_SHAPES = {
    "conv.0.weight": [32, 1, 3, 3],
    "conv.0.bias": [32],
    "conv.3.weight": [64, 32, 3, 3],
    "conv.3.bias": [64],
    "fc.0.weight": [128, 3136],
    "fc.0.bias": [128],
    "fc.3.weight": [10, 128],
    "fc.3.bias": [10],
}


def make_metrics(
    val_accs: list[float],
    train_accs: list[float] | None = None,
    lr: float = 1e-3,
    dropout: float = 0.2,
    alpha: float = 0.4,
    previous_command: UpdateCommand | None = None,
    previous_reflection: Reflection | None = None,
    lrs: list[float] | None = None,
    dropouts: list[float] | None = None,
) -> EpochMetrics:
    """EpochMetrics for the last of ``len(val_accs)`` epochs with the given accuracy history."""
    train_accs = train_accs or [min(1.0, v + 0.01) for v in val_accs]
    lrs = lrs or [lr] * len(val_accs)
    dropouts = dropouts or [dropout] * len(val_accs)
    history = [
        EpochSummary(
            epoch=i + 1,
            train_loss=1.0 - t,
            train_acc=t,
            val_loss=1.0 - v,
            val_acc=v,
            lr=lrs[i],
            dropout=dropouts[i],
            alpha=alpha,
        )
        for i, (t, v) in enumerate(zip(train_accs, val_accs))
    ]
    last = history[-1]
    return EpochMetrics(
        run_id="run-test",
        epoch=last.epoch,
        epochs_total=20,
        regime="1pct",
        n_train=600,
        train_loss=last.train_loss,
        train_acc=last.train_acc,
        val_loss=last.val_loss,
        val_acc=last.val_acc,
        per_class_val_acc=[last.val_acc] * 10,
        grad_norms={k: 0.1 for k in PARAM_SHAPES},
        weight_norms={k: 10.0 for k in PARAM_SHAPES},
        param_shapes=PARAM_SHAPES,
        lr=lr,
        dropout=dropout,
        alpha=alpha,
        wall_s=1.0,
        history=history,
        previous_command=previous_command,
        previous_reflection=previous_reflection,
    )

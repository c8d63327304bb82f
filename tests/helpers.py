"""Builders for agent-side tests, and a scripted OpenAI-compatible model server."""

from __future__ import annotations

from bench.scripted_endpoint import ScriptedOpenAI, ScriptedReply  # noqa: F401  (the tests' scripted endpoint)
from bus.messages import EpochMetrics, EpochSummary, Hyperparameter, Reflection, TaskSpec, UpdateCommand, WeightOp
from tasks.mnist import SPEC as MNIST_SPEC

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

# A regression task like tasks.diabetes (built inline: that module imports torch): an objective to minimise.
REGRESSION_SPEC = TaskSpec(
    name="regression",
    description="A small MLP trained with Adam to predict a disease score from 10 measurements.",
    objective="val_rmse",
    mode="min",
    noise_band=0.5,
    hyperparameters=[
        Hyperparameter(
            name="learning_rate", default=1e-3, low=1e-5, high=1e-1, scale="log", step=2.0, max_change=3.0,
            description="Adam's step size",
        ),
        Hyperparameter(
            name="dropout", default=0.0, low=0.0, high=0.9, scale="linear", step=0.1, max_change=0.2,
            description="probability of zeroing each hidden unit during training",
        ),
        Hyperparameter(
            name="weight_decay", default=0.0, low=0.0, high=0.1, scale="linear", step=0.01, max_change=0.03,
            description="L2 penalty coefficient",
        ),
    ],
)  # fmt: skip
REGRESSION_SHAPES = {"net.0.weight": [64, 10], "net.0.bias": [64], "net.3.weight": [1, 64], "net.3.bias": [1]}


def metrics_from(
    spec: TaskSpec,
    history_metrics: list[dict[str, float]],
    hyperparameters: dict[str, float],
    history_hyperparameters: list[dict[str, float]] | None = None,
    alpha: float = 0.4,
    previous_command: UpdateCommand | None = None,
    previous_reflection: Reflection | None = None,
    param_shapes: dict[str, list[int]] = PARAM_SHAPES,
    vectors: dict[str, list[float]] | None = None,
    budget: int = 600,
) -> EpochMetrics:
    """EpochMetrics of ``spec`` for the last of ``len(history_metrics)`` epochs: the metrics of each epoch,
    the knob values now (``hyperparameters``) and per epoch (default: the same every epoch)."""
    history_hyperparameters = history_hyperparameters or [hyperparameters] * len(history_metrics)
    history = [
        EpochSummary(epoch=i + 1, metrics=scores, hyperparameters=knobs, alpha=alpha)
        for i, (scores, knobs) in enumerate(zip(history_metrics, history_hyperparameters))
    ]
    return EpochMetrics(
        run_id="run-test",
        epoch=len(history),
        epochs_total=20,
        task=spec,
        regime="1pct",
        budget=budget,
        metrics=history[-1].metrics,
        vectors=vectors or {},
        hyperparameters=hyperparameters,
        alpha=alpha,
        grad_norms={k: 0.1 for k in param_shapes},
        weight_norms={k: 10.0 for k in param_shapes},
        param_shapes=param_shapes,
        wall_s=1.0,
        history=history,
        previous_command=previous_command,
        previous_reflection=previous_reflection,
    )


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
    """MNIST EpochMetrics (``tasks.mnist.SPEC``) for the last of ``len(val_accs)`` epochs with the given
    accuracy history; losses are 1 - accuracy."""
    train_accs = train_accs or [min(1.0, v + 0.01) for v in val_accs]
    lrs = lrs or [lr] * len(val_accs)
    dropouts = dropouts or [dropout] * len(val_accs)
    scores = [
        {"train_loss": 1.0 - t, "train_acc": t, "val_loss": 1.0 - v, "val_acc": v} for t, v in zip(train_accs, val_accs)
    ]
    knobs = [{"dropout": d, "learning_rate": r} for d, r in zip(dropouts, lrs)]
    return metrics_from(
        MNIST_SPEC, scores, {"dropout": dropout, "learning_rate": lr}, knobs, alpha, previous_command,
        previous_reflection, vectors={"per_class_val_acc": [val_accs[-1]] * 10},
    )  # fmt: skip


def make_regression_metrics(
    val_rmses: list[float],
    train_rmses: list[float] | None = None,
    lr: float = 1e-3,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    lrs: list[float] | None = None,
    previous_command: UpdateCommand | None = None,
    previous_reflection: Reflection | None = None,
    spec: TaskSpec = REGRESSION_SPEC,
) -> EpochMetrics:
    """EpochMetrics of a ``min`` task (:data:`REGRESSION_SPEC`, or ``spec`` with a subset of its knobs) for
    the last of ``len(val_rmses)`` epochs; train RMSE defaults to 2 below validation."""
    train_rmses = train_rmses or [v - 2.0 for v in val_rmses]
    scores = [
        {"train_loss": t * t, "train_rmse": t, "val_rmse": v, "val_r2": 1.0 - v / 100.0, "train_r2": 1.0 - t / 100.0}
        for t, v in zip(train_rmses, val_rmses)
    ]
    values = {"learning_rate": lr, "dropout": dropout, "weight_decay": weight_decay}
    names = spec.knob_names()
    knobs = [{**{n: values[n] for n in names}, "learning_rate": r} for r in lrs] if lrs else None
    return metrics_from(
        spec, scores, {n: values[n] for n in names}, knobs, 0.4, previous_command, previous_reflection,
        param_shapes=REGRESSION_SHAPES, budget=353,
    )  # fmt: skip


def make_command(
    alpha: float = 0.4, rationale: str = "", weight_ops: list[WeightOp] | None = None, **knobs
) -> UpdateCommand:
    """An UpdateCommand with the knob values by keyword: ``make_command(dropout=0.25, learning_rate=5e-4)``."""
    return UpdateCommand(hyperparameters=knobs, alpha=alpha, weight_ops=weight_ops, rationale=rationale)


def make_reflection(
    about_epoch: int, before: float, after: float, verdict: str, objective: str = "val_acc", text: str = "t"
) -> Reflection:
    """The reflection, made at epoch ``about_epoch + 1``, on the decision after ``about_epoch``."""
    return Reflection(
        epoch=about_epoch + 1, about_epoch=about_epoch, objective=objective, objective_before=before,
        objective_after=after, verdict=verdict, text=text,
    )  # fmt: skip


# --------------------------------------------------------------------------- a scripted model server


def trainer_config(**fields):
    """A :class:`trainer.config.TrainerConfig` for a test, with what the run specification decides (task, alpha,
    device, the agent's timeout and retries) taken from :class:`orchestration.spec.RunSpec`'s defaults and whether
    the controller reads instructions from the registry, as ``orchestration.configs`` passes them; ``fields`` give
    the rest (run_id, arm, regime, ...) or override."""
    from agents.controllers import resolve_controller
    from orchestration.spec import RULE_AGENT_TIMEOUT_S, RunSpec
    from trainer.config import TrainerConfig

    spec, controller = RunSpec(), resolve_controller(fields.get("controller", "none"))
    decided = {"task": spec.task, "alpha": spec.alpha, "device": spec.device, "agent_retries": spec.agent_retries,
               "agent_timeout_ms": int(RULE_AGENT_TIMEOUT_S * 1000),
               "instructions_read": controller.reads_instructions}  # fmt: skip
    return TrainerConfig(**{**decided, **fields})


def agent_config(**fields):
    """An :class:`agents.config.AgentConfig` for a test, with how it decides (controller ``heuristic`` unless given,
    the judge, the command space, the pipeline without extras, the repair budget) taken from
    :class:`orchestration.spec.RunSpec`'s defaults, as ``orchestration.configs`` passes them; ``fields`` give the
    endpoints and run folder, or override."""
    from agents.config import AgentConfig
    from agents.graph import pipeline_with
    from orchestration.configs import agent_settings
    from orchestration.spec import RunSpec

    controller = fields.pop("controller", "heuristic")
    decided = agent_settings(RunSpec(pipeline=pipeline_with([])), controller, fields.pop("llm", None))
    return AgentConfig(**{**decided, **fields})


def llm_settings(**fields):
    """:class:`agents.config.LLMSettings` for a test: the model spec's defaults (``orchestration.spec.ModelSpec``,
    as ``orchestration.configs.model_settings`` passes them), with ``fields`` (provider, base_url, model, ...)
    overriding."""
    from orchestration.configs import model_settings
    from orchestration.spec import ModelSpec

    return model_settings(ModelSpec()).model_copy(update=fields)

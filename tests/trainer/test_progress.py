"""The trainer's line per epoch names the task by its declared name, also when the run named it by module."""

from bus.messages import EpochSummary
from tests.helpers import REGRESSION_SPEC, trainer_config
from trainer.progress import progress_line


def test_the_progress_line_shows_the_tasks_name_and_the_objective_first(tmp_path):
    cfg = trainer_config(run_id="r", pair_id="p", arm="baseline", controller="none", task="userpkg.fit:make_task",
                        regime="50", seed=0, epochs=4, run_dir=tmp_path, recorder_endpoint="tcp://127.0.0.1:1")  # fmt: skip
    summary = EpochSummary(epoch=2, metrics={"train_loss": 0.25, "val_rmse": 55.0}, alpha=0.4,
                           hyperparameters={"learning_rate": 1e-3, "dropout": 0.0, "weight_decay": 0.0})  # fmt: skip
    assert progress_line(cfg, REGRESSION_SPEC, summary, None) == (
        "baseline regression    50 seed 0 | epoch   2/4 | val_rmse 55 train_loss 0.25 | "
        "learning_rate 1.00e-03 dropout 0 weight_decay 0 alpha 0.40"
    )


def guided_line(tmp_path, controller: str) -> str:
    from bus.messages import Instruction

    cfg = trainer_config(run_id="r", pair_id="p", arm="guided", controller=controller, task="diabetes", regime="50",
                         seed=0, epochs=4, run_dir=tmp_path, recorder_endpoint="tcp://127.0.0.1:1")  # fmt: skip
    summary = EpochSummary(epoch=2, metrics={"val_rmse": 55.0}, alpha=0.4, hyperparameters={"learning_rate": 1e-3})
    given = Instruction(instruction_id="r-0", text="lower the learning rate", source="flag", received_at=0.0)
    return progress_line(cfg, REGRESSION_SPEC, summary, None, instruction=given)


def test_an_instruction_is_shown_as_in_force_only_to_a_controller_that_reads_it(tmp_path):
    # issue 18: under the heuristic the line showed the instruction as in force, though no rule reads it
    assert guided_line(tmp_path, "llm").endswith(" | instruction: 'lower the learning rate'")
    assert guided_line(tmp_path, "heuristic").endswith(
        " | instruction (not read by heuristic; only guarded): 'lower the learning rate'"
    )

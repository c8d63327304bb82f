"""Tasks other than MNIST through the real processes: the regression and RL tasks, and a task plugged in from a
module outside ReflectNet's packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

# A task written by a user in their own module: least-squares regression y = X w + noise on 64 synthetic
# examples, trained by SGD; one knob, the learning rate. Nothing of ReflectNet is edited to run it.
OUTSIDE_TASK = '''
import math
import torch
from tasks.base import EpochResult, Hyperparameter, Task
from trainer.blend import BlendedOptimizer


class LineFit(Task):
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
                       max_change=3.0, description="SGD step size"),
    )

    def __init__(self, width: int = 4):
        self.width = width

    def setup(self, regime, seed, device):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(self.width, 1, generator=g)
        self.x = torch.randn(self.regimes[regime], self.width, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(self.regimes[regime], 1, generator=g)
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(self.width, 1)
        self.opt = BlendedOptimizer(torch.optim.SGD(self.net.parameters(), lr=0.05), dict(self.net.named_parameters()))

    @property
    def model(self):
        return self.net

    @property
    def optimizer(self):
        return self.opt

    def steps_per_epoch(self):
        return 4

    def train_epoch(self, epoch):
        for i in range(4):
            xb, yb = self.x[i * 16:(i + 1) * 16], self.y[i * 16:(i + 1) * 16]
            loss = torch.nn.functional.mse_loss(self.net(xb), yb)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        with torch.no_grad():
            mse = torch.nn.functional.mse_loss(self.net(self.x), self.y).item()
        return EpochResult({"train_mse": mse, "val_mse": mse}, steps=4)

    def hyperparameter_values(self):
        return {"learning_rate": self.opt.param_groups[0]["lr"]}

    def set_hyperparameters(self, values):
        for group in self.opt.param_groups:
            group["lr"] = values.get("learning_rate", group["lr"])

    def checkpoint_state(self):
        return {f"model.{k}": v.detach().clone() for k, v in self.net.state_dict().items()}, self.hyperparameter_values()

    def restore_state(self, tensors, meta):
        self.net.load_state_dict({k[len("model."):]: v for k, v in tensors.items()})
        self.set_hyperparameters(meta)


def make_task(width: int = 4):
    return LineFit(width=width)
'''


def run_py(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def query(db: Path, sql: str, params=None):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_the_regression_task_runs_both_arms_and_its_objective_is_minimised(tmp_path):
    db, out = tmp_path / "d.duckdb", tmp_path / "runs"
    result = run_py("--task", "diabetes", "--regime", "100", "--epochs", "6", "--controller", "heuristic",
                    "--db", str(db), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "val_rmse" in result.stdout and "least squares" in result.stdout
    runs = query(db, "SELECT arm, task, objective, mode, n_train, status FROM runs ORDER BY arm")
    assert runs == [("baseline", "diabetes", "val_rmse", "min", 100, "completed"),
                    ("guided", "diabetes", "val_rmse", "min", 100, "completed")]  # fmt: skip
    epochs = query(db, "SELECT r.arm, e.epoch, e.objective, e.metrics->>'val_rmse', e.hyperparameters "
                       "FROM epochs e JOIN runs r USING (run_id) ORDER BY r.arm, e.epoch")  # fmt: skip
    assert len(epochs) == 12 and all(float(value) == objective for _, _, objective, value, _ in epochs)
    assert set(json.loads(epochs[0][4])) == {"learning_rate", "dropout", "weight_decay"}
    commands = [json.loads(c) for (c,) in query(db, "SELECT command FROM decisions ORDER BY epoch")]
    assert len(commands) == 6 and all(set(c["hyperparameters"]) == {"learning_rate", "dropout", "weight_decay"}
                                      for c in commands)  # fmt: skip
    # Each applied command is what the next epoch trained with.
    guided = [json.loads(h) for arm, _, _, _, h in epochs if arm == "guided"]
    for command, used in zip(commands[:5], guided[1:]):
        assert command["hyperparameters"] == pytest.approx(used)
    best = query(db, "SELECT best_objective, (SELECT min(objective) FROM epochs e WHERE e.run_id = r.run_id) "
                     "FROM run_results r")  # fmt: skip
    assert all(b == m for b, m in best)  # min mode: the best epoch has the lowest RMSE


def test_the_rl_task_trains_ppo_through_the_optimizer_wrapper(tmp_path):
    db, out = tmp_path / "c.duckdb", tmp_path / "runs"
    result = run_py("--task", "cartpole", "--regime", "2k", "--epochs", "2", "--controller", "heuristic",
                    "--task-option", "eval_episodes=2", "--db", str(db), "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "eval_return_mean" in result.stdout
    rows = query(db, "SELECT r.arm, e.epoch, e.objective, e.metrics->>'env_steps', e.hyperparameters->>'ent_coef' "
                     "FROM epochs e JOIN runs r USING (run_id) ORDER BY r.arm, e.epoch")  # fmt: skip
    assert [(a, e) for a, e, *_ in rows] == [("baseline", 1), ("baseline", 2), ("guided", 1), ("guided", 2)]
    assert all(0 < objective <= 500 for _, _, objective, _, _ in rows)
    assert [float(steps) for _, _, _, steps, _ in rows[:2]] == [2048.0, 4096.0]
    assert rows[0][2] == rows[2][2]  # same seed, same first epoch in both arms
    assert query(db, "SELECT DISTINCT task, objective, mode FROM runs") == [("cartpole", "eval_return_mean", "max")]


def test_a_task_from_a_module_outside_reflectnet_runs_end_to_end(tmp_path):
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "linefit.py").write_text(textwrap.dedent(OUTSIDE_TASK))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    db, out = tmp_path / "u.duckdb", tmp_path / "runs"
    result = run_py("--task", "userpkg.linefit:make_task", "--task-option", "width=4", "--controller", "heuristic",
                    "--db", str(db), "--out", str(out), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = query(db, "SELECT arm, task, objective, mode, epochs, status FROM runs ORDER BY arm")
    assert runs == [("baseline", "linefit", "val_mse", "min", 4, "completed"),
                    ("guided", "linefit", "val_mse", "min", 4, "completed")]  # fmt: skip
    mse = [m for (m,) in query(db, "SELECT e.objective FROM epochs e JOIN runs r USING (run_id) "
                                   "WHERE r.arm = 'baseline' ORDER BY epoch")]  # fmt: skip
    assert len(mse) == 4 and mse[-1] < mse[0]  # SGD does fit the line
    prompts = query(db, "SELECT prompt FROM decisions")
    assert len(prompts) == 4
    bad = run_py("--task", "userpkg.linefit:make_task", "--task-option", "depth=2", "--db", str(db), env=env,
                 timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.strip() == "run.py: error: task 'linefit' takes no option(s) depth"


OUTSIDE_CONTROLLER = '''
import json

from agents.controllers import ControllerAnswer


class HalvingPolicy:
    """Halves the learning rate after every epoch, keeps the other knobs."""

    name = "halving"

    def propose(self, state):
        m = state["metrics"]
        knobs = {**m.hyperparameters, "learning_rate": m.hyperparameters["learning_rate"] / 2}
        return ControllerAnswer(json.dumps({**knobs, "alpha": m.alpha, "rationale": f"halve it after {m.epoch}"}))


def make_controller(cfg):
    return HalvingPolicy()
'''


def test_a_controller_from_a_module_outside_reflectnet_steers_a_run(tmp_path):
    (tmp_path / "userctl.py").write_text(textwrap.dedent(OUTSIDE_CONTROLLER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    db, out = tmp_path / "h.duckdb", tmp_path / "runs"
    result = run_py("--task", "diabetes", "--regime", "50", "--epochs", "4", "--arms", "guided", "--controller",
                    "userctl:make_controller", "--db", str(db), "--out", str(out), env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert query(db, "SELECT controller, status FROM runs") == [("userctl:make_controller", "completed")]
    lrs = [lr for (lr,) in query(db, "SELECT lr FROM epochs ORDER BY epoch")]
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])  # each decision applied at the next epoch
    decisions = query(db, "SELECT controller, valid, fallback FROM decisions ORDER BY epoch")
    assert decisions == [("halving", True, False)] * 4

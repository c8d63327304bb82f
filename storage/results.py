"""The per-run results the report computes from: one :class:`RunResult` per completed or running run, its
protocol, and their export as a small CSV file that ``run.py report --results FILE`` renders again without the
database.

A run's *protocol* is ``runs.config->'experiment'`` (what its fingerprint hashes) without the seed; a run
recorded before that key existed gets one derived from its recorded trainer and spec (task options, epochs, the
agent's nodes and instructions, the model), marked ``"derived": true``. The protocol splits three ways:

* the *setting* (task options, epochs, anything else an arm shares with its baseline): a table per setting;
* ``regime`` and ``start`` (the knob values every arm of a pair starts from; ``{}``: the task's defaults);
* the *variant*: what only a guided arm has (nodes, instructions, model settings), shown beside the controller.

A *cell* is one protocol (seed apart): its runs are pooled over seeds, and a seed counts once — of two completed
runs of the same protocol and seed the one that finished last counts (``counted``). A guided or A/A run is paired
with the counted baseline of the same setting, regime, start and seed.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from storage import queries
from storage.reader import Reader, ReaderError

# Keys of runs.config->'experiment' that are not part of a setting or a variant.
_OWN_KEYS = ("task", "regime", "seed", "arm", "controller", "start")
_SETTING_KEYS = ("task_options", "epochs")  # shared by every arm of a pair
# orchestration.planning.NON_EXPERIMENT_OPTIONS (a test keeps them equal): importing it here would load torch.
NOT_PROTOCOL_OPTIONS = ("data_dir", "compile_eval")


class ResultsError(ReaderError):
    """A results export that cannot be read: one line for the user."""


def canonical(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: the one text of a protocol part, in the CSV and in keys."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class RunResult:
    """One run as the report counts it (one CSV row). ``protocol``: its experiment without the seed (canonical
    JSON); objective values in the task's units (NaN: diverged; None: no epoch yet); ``summary``: the task's
    summary metrics at the best epoch (JSON); cost columns None where the database records no cost."""

    run_id: str
    task: str
    objective: str
    mode: str
    regime: str
    n_train: int
    start: str
    arm: str
    controller: str
    seed: int
    status: str
    counted: bool
    epochs: int
    epochs_run: int
    final_objective: float | None
    best_objective: float | None
    best_epoch: int | None
    final_val_acc: float | None
    max_val_acc: float | None
    final_train_acc: float | None
    reference: str | None
    reference_objective: float | None
    protocol: str
    summary: str = "{}"
    decisions: int | None = None
    llm_calls: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    wait_s: float | None = None
    cost_usd: float | None = None
    _parsed: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def _protocol(self) -> dict:
        if self._parsed is None:
            self._parsed = json.loads(self.protocol)
        return self._parsed

    @property
    def setting(self) -> str:
        """What every arm of the pair shares beyond task, regime and start (canonical JSON)."""
        return canonical({k: v for k, v in self._protocol().items() if k in _SETTING_KEYS})

    @property
    def variant(self) -> str:
        """What only this arm's controller has: nodes, instructions, model settings (canonical JSON)."""
        return canonical({k: v for k, v in self._protocol().items() if k not in _OWN_KEYS + _SETTING_KEYS})

    @property
    def pair_key(self) -> tuple:
        """The runs one baseline is paired with: same task, objective, setting, regime, start and seed."""
        return self.task, self.objective, self.setting, self.regime, self.start, self.seed

    @property
    def cell_key(self) -> tuple:
        """The cell this run is pooled in: its whole protocol, seed apart."""
        return self.task, self.objective, self.setting, self.regime, self.start, self.arm, self.controller, self.variant

    @property
    def label(self) -> str:
        """The arm as a table names it: Baseline, A/A, or Guided (controller)."""
        return {"baseline": "Baseline", "aa": "A/A"}.get(self.arm, f"Guided ({self.controller})")

    @property
    def summary_values(self) -> dict[str, float | None]:
        return json.loads(self.summary)


def _derived_experiment(run: dict) -> dict:
    """The protocol of a run recorded before ``runs.config->'experiment'``: what its trainer and spec recorded."""
    trainer, spec = run["trainer"] or {}, run["spec"] or {}
    options = trainer.get("task_options")
    if options is None:  # schema 1: MNIST with a top-level batch size
        options = {"batch_size": trainer["batch_size"]} if "batch_size" in trainer else {}
    what: dict = {
        "task": run["task"], "regime": run["regime"], "arm": run["arm"], "controller": run["controller"],
        "task_options": {k: v for k, v in options.items() if k not in NOT_PROTOCOL_OPTIONS and v is not None},
        "epochs": run["epochs"], "derived": True,
    }  # fmt: skip
    if run["controller"] != "none":
        what |= {"nodes": spec.get("pipeline", []), "llm_model": run["llm_model"]}
        if spec.get("instructions"):
            what["instructions"] = [i.get("text") for i in spec["instructions"]]
    return what


def _number(value) -> float | None:
    return None if value is None else float(value)


def result_of(run: dict) -> RunResult:
    """A :class:`RunResult` from a :func:`storage.queries.report_runs` row (``counted`` left False)."""
    experiment = run["experiment"] or _derived_experiment(run)
    protocol = {k: v for k, v in experiment.items() if k != "seed"}
    return RunResult(
        run_id=run["run_id"], task=run["task"], objective=run["objective"], mode=run["mode"] or "max",
        regime=run["regime"], n_train=run["n_train"], start=canonical(experiment.get("start", {})), arm=run["arm"],
        controller=run["controller"], seed=run["seed"], status=run["status"], counted=False, epochs=run["epochs"],
        epochs_run=run["epochs_run"], final_objective=_number(run["final_objective"]),
        best_objective=_number(run["best_objective"]), best_epoch=run["best_epoch"],
        final_val_acc=_number(run["final_val_acc"]), max_val_acc=_number(run["max_val_acc"]),
        final_train_acc=_number(run["final_train_acc"]), reference=run["reference"],
        reference_objective=_number(run["reference_objective"]), protocol=canonical(protocol),
        summary=canonical(run["summary"]), **{c: run[c] for c in queries.COST_COLUMNS},
    )  # fmt: skip


def mark_counted(results: list[RunResult]) -> list[RunResult]:
    """Set ``counted`` on the completed run that finished last of each cell and seed (``results`` in the order
    they finished); every other run of that cell and seed is superseded, and a running run is never counted."""
    last: dict[tuple, RunResult] = {}
    for result in results:
        result.counted = False
        if result.status == "completed" and result.final_objective is not None:
            last[(*result.cell_key, result.seed)] = result
    for result in last.values():
        result.counted = True
    return results


def read_results(reader: Reader) -> list[RunResult]:
    """Every completed or running run of ``reader``'s database as :class:`RunResult`, ``counted`` set."""
    return mark_counted([result_of(run) for run in queries.report_runs(reader)])


# --------------------------------------------------------------------------- the CSV export

COLUMNS = tuple(f.name for f in fields(RunResult) if not f.name.startswith("_"))
_INTS = {"n_train", "seed", "epochs", "epochs_run", "best_epoch", "decisions", "llm_calls", "prompt_tokens",
         "completion_tokens"}  # fmt: skip
_FLOATS = {"final_objective", "best_objective", "final_val_acc", "max_val_acc", "final_train_acc",
           "reference_objective", "wait_s", "cost_usd"}  # fmt: skip


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)  # repr: a float reads back to the same bits


def write_results_csv(results: list[RunResult], path: Path) -> Path:
    """Write ``results`` to ``path`` (one row per run, :data:`COLUMNS`; empty cell: None). Raises OSError."""
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for result in results:
            writer.writerow(_text(getattr(result, name)) for name in COLUMNS)
    return path


def _parse(name: str, text: str):
    if text == "" and name not in ("start", "protocol", "summary"):
        return None
    if name in _INTS:
        return int(text)
    if name in _FLOATS:
        return float(text)  # "nan" and "inf" included
    if name == "counted":
        if text not in ("true", "false"):
            raise ValueError(f"counted must be true or false, got {text!r}")
        return text == "true"
    if name in ("start", "protocol", "summary"):
        return canonical(json.loads(text or "{}"))
    return text


def merge_exports(exports: list[list[RunResult]]) -> list[RunResult]:
    """Several exports as one (a study run in several sittings or on several machines, ``--only`` a part each): a
    run in more than one is kept once, as the later export has it (a run still going in an earlier export may be
    completed in a later one), in the order runs first appear; where two exports count different runs of one cell
    and seed, the later export's counts (as a later run in one database supersedes an earlier one)."""
    merged: dict[str, RunResult] = {}
    for results in exports:
        for result in results:
            merged[result.run_id] = result  # a dict keeps the first position, takes the last value
    counted: dict[tuple, RunResult] = {}
    for results in exports:
        for result in results:
            if merged[result.run_id] is result and result.counted:
                earlier = counted.get((*result.cell_key, result.seed))
                if earlier is not None and earlier is not result:
                    earlier.counted = False
                counted[(*result.cell_key, result.seed)] = result
    return list(merged.values())


def read_results_csv(path: Path, flag: str = "--results") -> list[RunResult]:
    """The :class:`RunResult` rows of an export written by :func:`write_results_csv`. Raises
    :class:`ResultsError` (one line, naming the ``flag`` the file was given with) for a missing file, missing
    columns or a value that does not parse."""
    try:
        with path.open(newline="") as source:
            reader = csv.DictReader(source)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ResultsError(f"{flag} {path}: not a ReflectNet results export: no column {', '.join(missing)}")
            results = []
            for line, row in enumerate(reader, 2):
                try:
                    results.append(RunResult(**{c: _parse(c, row[c] or "") for c in COLUMNS}))
                except (ValueError, TypeError) as exc:
                    raise ResultsError(f"{flag} {path}, line {line}: {exc}") from None
    except OSError as exc:
        raise ResultsError(f"{flag} {path}: cannot read it: {exc.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ResultsError(f"{flag} {path}: not a CSV file: {exc}") from None
    return results

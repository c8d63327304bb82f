"""The fault suite's audit (``bench.faults``): the database against what the trainers checkpointed and logged
(lost, extra and duplicated rows), one :class:`Outcome` per scenario, and the Markdown report of them all."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.fault_run import query
from trainer.checkpoint import CheckpointError, read_state


@dataclass
class Audit:
    runs: int = 0
    completed: int = 0
    expected: int = 0
    found: int = 0
    lost: int = 0
    extra: int = 0
    duplicates: int = 0
    detail: dict[str, dict[str, int]] = field(default_factory=dict)


def audit(db: Path, out: Path) -> Audit:
    """Compare the database with what the trainers of every run under ``out`` checkpointed and logged."""
    runs = query(db, "SELECT run_id, arm, status, config FROM runs")
    logged: dict[tuple[str, int], dict] = {}
    for path in out.glob("*/logs/trainer-*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "epoch_done":
                logged[(record["run_id"], record["epoch"])] = record
    expected: dict[str, set] = {"epochs": set(), "decisions": set(), "reflections": set()}
    result = Audit(runs=len(runs), completed=sum(status == "completed" for _, _, status, _ in runs))
    for run_id, arm, _, config in runs:
        trainer = json.loads(config)["trainer"]
        checkpoint = (
            Path(trainer["checkpoint_dir"] or Path(trainer["run_dir"]) / "checkpoints") / f"{run_id}.safetensors"
        )
        try:
            ran = read_state(checkpoint).epoch
        except CheckpointError:
            ran = 0
        for epoch in range(1, ran + 1):
            expected["epochs"].add((run_id, epoch))
            if arm == "guided":
                expected["decisions"].add((run_id, epoch))
                if logged.get((run_id, epoch), {}).get("reflection"):
                    expected["reflections"].add((run_id, epoch))
    for table, keys in expected.items():
        rows = query(db, f"SELECT run_id, epoch FROM {table}")
        found = set(rows)
        if table == "reflections":  # the log may miss the last epoch before a kill: count it as expected if stored
            keys = keys | {k for k in found if k in expected["decisions"] and k not in logged}
        lost, extra, dup = len(keys - found), len(found - keys), len(rows) - len(found)
        result.detail[table] = {"expected": len(keys), "found": len(found), "lost": lost, "extra": extra, "dup": dup}
        result.expected += len(keys)
        result.found += len(found)
        result.lost += lost
        result.extra += extra
        result.duplicates += dup
    twice = query(
        db, "SELECT count(*) - count(DISTINCT (ts, pid, component, event, CAST(data AS VARCHAR))) FROM events"
    )[0][0]
    result.detail["events"] = {"found": query(db, "SELECT count(*) FROM events")[0][0], "dup": twice}
    result.duplicates += twice
    return result


@dataclass
class Outcome:
    scenario: str
    faults: list[str]
    exit_codes: list[int]
    audit: Audit
    wall_s: float
    checks: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        a = self.audit
        return a.lost == 0 and a.duplicates == 0 and a.extra == 0 and a.completed == a.runs > 0


def report(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | faults injected | exit codes | runs completed | records expected | found | lost | extra | duplicates | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        a = o.audit
        lines.append(
            f"| {o.scenario} | {'; '.join(o.faults)} | {' '.join(map(str, o.exit_codes))} | {a.completed}/{a.runs} | "
            f"{a.expected} | {a.found} | {a.lost} | {a.extra} | {a.duplicates} | {o.wall_s:.0f} |"
        )
    total = Counter()
    for o in outcomes:
        total.update(faults=len(o.faults), runs=o.audit.runs, completed=o.audit.completed, expected=o.audit.expected,
                     found=o.audit.found, lost=o.audit.lost, extra=o.audit.extra, duplicates=o.audit.duplicates)  # fmt: skip
    lines.append(
        f"| **all** | {total['faults']} | | {total['completed']}/{total['runs']} | {total['expected']} | "
        f"{total['found']} | **{total['lost']}** | {total['extra']} | **{total['duplicates']}** | |"
    )
    lines.append("")
    for o in outcomes:
        lines.append(f"- {o.scenario}: {json.dumps(o.checks)}")
    return "\n".join(lines)

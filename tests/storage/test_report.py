"""The report and SQL commands against a real DuckDB file filled through the recorder's own writer."""

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from bus.messages import RunFinished
from storage.reader import ReaderError, open_reader
from storage.recorder import RecordBuffer
from storage.report import (
    DPI,
    decision_figure,
    fit_figure,
    hyperparameter_figure,
    objective_figure,
    read_report_data,
    run_sql,
    save_figure,
    write_report,
)
from storage.schema import migrate
from tests.storage.test_recorder import decision_record, epoch_record, reflection_record, run_started

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "rep.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for seed, final in ((0, 0.90), (1, 0.94)):
            for arm in ("baseline", "guided"):
                run_id = f"{arm}{seed}"
                buffer.add(run_started(run_id, arm=arm, seed=seed))
                for epoch, acc in enumerate((0.5, 0.8, final), 1):
                    buffer.add(epoch_record(run_id, epoch, acc if arm == "baseline" else acc - 0.01))
                    if arm == "guided":
                        buffer.add(decision_record(run_id, epoch, 1e-3))
                buffer.add(reflection_record(run_id, 2, 0.5, 0.8))
                buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))
        buffer.flush()
    return path


def test_report_writes_the_table_with_mean_std_and_n_and_three_figures(db, tmp_path):
    files, notes = write_report(db, tmp_path / "report")
    assert [f.name for f in files] == [
        "results.md",
        "paper_table.md",
        "results.csv",
        "paired_differences.png",
        "validation_accuracy.png",
        "hyperparameters.png",
        "decisions.png",
    ]
    assert notes == []
    table = files[0].read_text()
    assert table.split("higher is better\n\n", 1)[1] in files[1].read_text()  # the paper's file holds the MNIST section
    assert "| 100 | 100 | Baseline | 2 | 0.9200 ± 0.0283 | 0.9200 ± 0.0283 | 0.9000 ± 0.0000 |" in table
    assert "| 100 | 100 | Guided (heuristic) | 2 | 0.9100 ± 0.0283 |" in table
    for png in files[3:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_sql_answers_as_a_markdown_table_and_refuses_bad_sql(db):
    answer = run_sql(db, "SELECT arm, count(*) AS runs FROM runs GROUP BY arm ORDER BY arm")
    assert answer.splitlines() == ["| arm | runs |", "|---|---|", "| baseline | 2 |", "| guided | 2 |", "(2 rows)"]
    with pytest.raises(ReaderError, match="SQL error: Parser Error"):
        run_sql(db, "SELEC 1")
    with pytest.raises(ReaderError, match="Catalog Error"):
        run_sql(db, "SELECT * FROM no_such_table")


def test_report_and_sql_from_the_command_line(db, tmp_path):
    report = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(db), "--out", str(tmp_path / "r")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "Guided (heuristic)" in report.stdout and str(tmp_path / "r" / "decisions.png") in report.stdout
    bad = subprocess.run(
        [sys.executable, "run.py", "sql", "DROP TABLE runs", "--db", str(db)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("run.py sql: error: SQL error:") and "Traceback" not in bad.stderr
    )
    assert run_sql(db, "SELECT count(*) AS n FROM runs").splitlines()[2] == "| 4 |"  # read-only: nothing dropped
    missing = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(tmp_path / "none.duckdb")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"run.py report: error: no database at {tmp_path / 'none.duckdb'}"
    )
    unwritable = subprocess.run(
        [sys.executable, "run.py", "report", "--db", str(db), "--out", "/proc/reflectnet-report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unwritable.returncode == 2 and unwritable.stderr.strip() == (
        "run.py report: error: --out /proc/reflectnet-report: cannot write the report there: No such file or directory"
    )


def outside_the_figure(fig) -> list[str]:
    """What of ``fig`` is drawn past its edges: its title (and any figure text), its legends, and each
    panel with everything it draws (title, tick labels, axis labels, legend), as matplotlib measures them."""
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    parts = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_visible() and t.get_text()]
    parts += [("figure legend", legend.get_window_extent(renderer)) for legend in fig.legends]
    parts += [(f"panel {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in fig.axes if ax.get_visible()]
    return [
        f"{name!r}: x {box.x0:.0f}..{box.x1:.0f} of {width:.0f}, y {box.y0:.0f}..{box.y1:.0f} of {height:.0f}"
        for name, box in parts
        if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5
    ]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]  # IHDR: width and height, big-endian, at bytes 16..24
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


@pytest.mark.parametrize("regimes", [["100"], ["10", "100", "600"]])
def test_every_figure_shows_its_whole_title_axes_and_legend_at_the_size_it_is_written(tmp_path, regimes):
    db = tmp_path / "fig.duckdb"
    with duckdb.connect(str(db)) as con:
        migrate(con)
        buffer = RecordBuffer(con)
        for regime in regimes:
            for arm in ("baseline", "guided"):
                run_id = f"{arm}-{regime}"
                buffer.add(run_started(run_id, arm=arm, regime=regime, budget=int(regime)))
                for epoch, acc in enumerate((0.5, 0.8, 0.9), 1):
                    buffer.add(epoch_record(run_id, epoch, acc))
                    if arm == "guided":
                        buffer.add(decision_record(run_id, epoch, 1e-3 / epoch))
                buffer.add(RunFinished(run_id=run_id, status="completed", finished_at=time.time()))
        buffer.add(run_started("going", arm="guided", regime=regimes[0], budget=int(regimes[0])))  # still going
        buffer.add(epoch_record("going", 1, 0.6))
        buffer.flush()
    with open_reader(db) as reader:
        data = read_report_data(reader)
    task = data.task("mnist")
    running = [run.label for panel in task.panels for run in panel.running]
    assert running == ["Guided (heuristic)"] and task.regimes == sorted(regimes, key=lambda r: -int(r))
    assert task.knobs == ["learning_rate", "dropout"]
    for build in (objective_figure, hyperparameter_figure, decision_figure):
        plt, fig = build(task)
        fit_figure(fig)
        assert outside_the_figure(fig) == [], build.__name__
        title = fig.get_suptitle()
        assert title.replace("\n", " ") in {
            "Validation accuracy per epoch, higher is better (line: mean over seeds, band: min–max)",
            "Hyperparameters the controllers chose (mean over seeds)",
            "Decisions and the verdicts on them",
        }
        expected = tuple(round(v) for v in fig.get_size_inches() * DPI)
        path = save_figure(plt, fig, tmp_path / f"{build.__name__}.png")
        assert png_size(path) == expected  # written at the size it was laid out for


def test_the_old_one_panel_layout_cut_the_title_and_the_check_sees_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots(1, 1, figsize=(5, 3.2), dpi=DPI)
    fig.suptitle("Validation accuracy per epoch (line: mean over seeds, band: min–max)")
    fig.tight_layout()
    assert len(outside_the_figure(fig)) == 1 and "Validation accuracy" in outside_the_figure(fig)[0]
    plt.close(fig)


def test_the_decision_timeline_marks_where_an_instruction_first_shaped_a_decision(db, tmp_path):
    from bus.messages import Instruction, InstructionRecord

    with duckdb.connect(str(db)) as con:
        buffer = RecordBuffer(con)
        said = Instruction(instruction_id="guided0-say-1", text="raise dropout", source="say", received_at=time.time())
        buffer.add(InstructionRecord(run_id="guided0", instruction=said))
        buffer.add(InstructionRecord(run_id="guided0", instruction=said, first_epoch=2))
        late = said.model_copy(update={"instruction_id": "guided1-say-1", "text": "a long instruction at the last epoch"})
        buffer.add(InstructionRecord(run_id="guided1", instruction=late, first_epoch=3))
        buffer.flush()
    with open_reader(db) as reader:
        (task,) = read_report_data(reader).tasks
    marks = {run.run_id: run.instructions for run in task.timeline}
    late_mark = (3, "a long instruction at the last epoch", None)
    assert marks == {"guided0": [(2, "raise dropout", None)], "guided1": [late_mark]}
    _, fig = decision_figure(task)
    assert "raise dropout" in [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "instruction (first decision it shaped)" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert outside_the_figure(fig) == []  # the label stays readable inside the figure


def test_an_instruction_label_is_its_reading_and_never_a_row_of_boxes():
    from storage.figures import font_draws, instruction_label

    one_shot = "read as: learning_rate × 0.5 at the next decision, then kept"
    assert instruction_label("halve the learning rate", one_shot) == "learning_rate × 0.5"
    assert instruction_label("把学习率降低一半", one_shot) == "learning_rate × 0.5"
    assert not font_draws("把学习率降低一半") and font_draws("learning_rate × 0.5")
    assert instruction_label("把学习率降低一半", "not understood: nothing will change") == "not understood"
    excerpt = "not understood: 'lowr teh lernin...'"
    assert instruction_label("lowr teh lernin rate a lot pls", "not understood: x") == excerpt
    assert instruction_label("学习率", None) == "instruction"  # recorded before readings, in a script not drawable
    assert instruction_label("raise dropout", None) == "raise dropout"


def test_labels_of_instructions_close_together_are_stacked():
    from storage.figures import label_levels

    assert label_levels([2, 3, 4, 12], span=12) == [0, 1, 2, 0]
    assert label_levels([1, 10], span=10) == [0, 0]
    assert label_levels([2, 3], span=2) == [0, 1]


def test_the_timeline_labels_readings_at_close_epochs_apart_and_drawable(db, tmp_path):
    from bus.messages import Instruction, InstructionReading, InstructionRecord

    def said(n, text, read_as):
        reading = InstructionReading(read_as=read_as, intent="x", confidence=1.0, reader="lexicon")
        return Instruction(instruction_id=f"guided0-say-{n}", text=text, source="say", received_at=time.time(),
                           reading=reading)  # fmt: skip

    with duckdb.connect(str(db)) as con:
        buffer = RecordBuffer(con)
        given = [("把学习率降低一半", "read as: learning_rate × 0.5 at the next decision, then kept"),
                 ("请不要改变任何东西吧", "not understood: nothing will change because of it")]
        for n, (text, read_as) in enumerate(given):
            buffer.add(InstructionRecord(run_id="guided0", instruction=said(n, text, read_as), first_epoch=2 + n))
        buffer.flush()
    with open_reader(db) as reader:
        (task,) = read_report_data(reader).tasks
    _, fig = decision_figure(task)
    labels = [t for ax in fig.axes for t in ax.texts if t.get_text() in ("learning_rate × 0.5", "not understood")]
    assert len(labels) == 2
    first, second = (label.get_window_extent(fig.canvas.get_renderer()) for label in labels)
    assert not first.overlaps(second)
    assert outside_the_figure(fig) == []


def test_identical_curves_get_their_own_style_and_say_which_they_hide():
    from storage.figures import curve_styles

    same = [(1, 0.5, 0.5, 0.5), (2, 0.6, 0.6, 0.6)]
    styles = curve_styles([("baseline", same), ("heuristic", [(1, 0.5, 0.5, 0.5)]), ("plateau", same)])
    assert [label for label, _ in styles] == ["baseline", "heuristic", "plateau (= baseline)"]
    assert len({(kw["linestyle"], kw["marker"]) for _, kw in styles}) == 3


def test_the_decision_timeline_draws_every_guided_run_over_pages(db):
    from storage.figures import TIMELINE_PANELS, decision_figures

    with open_reader(db) as reader:
        (task,) = read_report_data(reader).tasks
    task.timeline = task.timeline * 7  # 14 runs
    pages = list(decision_figures(task))
    assert len(pages) == 2 and TIMELINE_PANELS == 12
    assert [sum(ax.get_visible() for ax in fig.axes) for _, fig in pages] == [12, 2]
    assert pages[1][1].get_suptitle().replace("\n", " ") == "Decisions and the verdicts on them (runs 13–14 of 14)"
    for plt, fig in pages:
        plt.close(fig)

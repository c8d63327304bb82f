"""bench.guidance_cases: the JSON-lines cases file, read line by line; each kind of bad line is one error line
naming the file and line, and ``python -m bench.guidance --cases`` exits 2 on it without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.guidance import main
from bench.guidance_cases import CASES, Case, CaseFileError, case_record, load_cases, parse_case

REPO = Path(__file__).resolve().parents[2]

GOOD = {"kind": "explicit", "task": "mnist", "state": "plateau", "instruction": "lr/2",
        "want": [["learning_rate", -1]], "against": [["learning_rate", 1]]}  # fmt: skip


def write(tmp_path, *lines: str):
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_good_file_gives_its_cases_in_order_with_the_defaults_of_case(tmp_path):
    path = write(
        tmp_path,
        json.dumps({**GOOD, "lang": "fr", "family": "code", "id": 17, "note": ["kept"]}),
        "",  # a blank line is skipped
        json.dumps({"kind": "evidence", "state": "steady", "instruction": None, "hold": True}),
        json.dumps({"kind": "goal", "task": "cartpole", "state": "diverging", "instruction": "稳定一点",
                    "want": [["clip_range", -1], ["alpha", -1]], "all_of": True, "weights": False, "lang": "zh"}),
    )  # fmt: skip
    first, evidence, goal = load_cases(path)
    assert first == Case("explicit", "plateau", "lr/2", want=(("learning_rate", -1),),
                         against=(("learning_rate", 1),), lang="fr", family="code")  # fmt: skip
    assert first.extra == {"id": 17, "note": ["kept"]}
    assert evidence == Case("evidence", "steady", None, hold=True)
    assert (evidence.task, evidence.lang, evidence.family, evidence.want) == ("mnist", "en", None, ())
    assert goal.task == "cartpole" and goal.all_of and goal.want == (("clip_range", -1), ("alpha", -1))
    assert goal.instruction == "稳定一点" and goal.lang == "zh"
    # written back in the file's form, extra keys included
    assert case_record(first) == {**GOOD, "hold": False, "all_of": False, "weights": False, "lang": "fr",
                                  "family": "code", "id": 17, "note": ["kept"]}  # fmt: skip


def test_every_built_in_case_survives_the_file_form():
    assert tuple(parse_case(json.dumps(case_record(case))) for case in CASES) == CASES


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "a case is a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "instruction"}), "missing 'instruction'"),
    (json.dumps({"task": "mnist"}), "missing 'kind', 'state', 'instruction'"),
    (json.dumps({**GOOD, "kind": "wish"}), "unknown kind 'wish'; one of explicit, goal, evidence"),
    (json.dumps({**GOOD, "task": "imagenet"}), "unknown task 'imagenet'; one of mnist, diabetes, cartpole"),
    (json.dumps({**GOOD, "state": "exploding"}), "unknown state 'exploding'; one of steady, steady_late,"),
    (json.dumps({**GOOD, "want": [["weight_decay", -1]]}),
     "'want': task mnist has no knob 'weight_decay'; its knobs: dropout, learning_rate, alpha"),
    (json.dumps({**GOOD, "task": "cartpole", "against": [["dropout", 1]]}), "task cartpole has no knob 'dropout'"),
    (json.dumps({**GOOD, "want": [["learning_rate", "down"]]}), "'want': each move is [knob, -1 or 1], got"),
    (json.dumps({**GOOD, "want": [["learning_rate", 2]]}), "each move is [knob, -1 or 1]"),
    (json.dumps({**GOOD, "want": [["learning_rate", True]]}), "each move is [knob, -1 or 1]"),
    (json.dumps({**GOOD, "want": "learning_rate"}), "'want' must be a list of [knob, -1 or 1] pairs"),
    (json.dumps({**GOOD, "hold": "false"}), "'hold' must be true or false, got 'false'"),
    (json.dumps({**GOOD, "instruction": 3}), "'instruction' must be a non-empty string or null, got 3"),
    (json.dumps({**GOOD, "instruction": "  "}), "'instruction' must be a non-empty string or null"),
    (json.dumps({**GOOD, "lang": None}), "'lang' must be a non-empty string, got None"),
]


@pytest.mark.parametrize("line, says", BAD_LINES)
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, line, says):
    path = write(tmp_path, json.dumps(GOOD), line, json.dumps(GOOD))
    with pytest.raises(CaseFileError) as caught:
        load_cases(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ") and says in message and "\n" not in message


@pytest.mark.parametrize("line, says", BAD_LINES[:1] + BAD_LINES[4:8])
def test_main_exits_2_with_one_error_line_on_a_bad_line(tmp_path, capsys, line, says):
    path = write(tmp_path, json.dumps(GOOD), json.dumps(GOOD), line)
    assert main(["--cases", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"python -m bench.guidance: error: {path}:3: ") and says in err


def test_an_empty_or_missing_file_is_an_error_too(tmp_path, capsys):
    empty = write(tmp_path, "", "   ")
    assert main(["--cases", str(empty)]) == 2
    assert capsys.readouterr().err == f"python -m bench.guidance: error: {empty}: no cases (one JSON object a line)\n"
    missing = tmp_path / "nowhere.jsonl"
    assert main(["--cases", str(missing)]) == 2
    assert capsys.readouterr().err.startswith(f"python -m bench.guidance: error: {missing}: cannot read the cases file")


def test_an_output_in_a_missing_folder_is_refused_before_the_run(tmp_path, capsys):
    path = write(tmp_path, json.dumps(GOOD))
    out = tmp_path / "no" / "figures.json"
    assert main(["--cases", str(path), "--json", str(out)]) == 2
    assert capsys.readouterr().err == f"python -m bench.guidance: error: {out}: no such folder {out.parent}\n"
    assert main(["--cases", str(path), "--per-case", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_the_command_line_exits_2_without_a_traceback(tmp_path):
    path = write(tmp_path, json.dumps({**GOOD, "state": "exploding"}))
    result = subprocess.run([sys.executable, "-m", "bench.guidance", "--cases", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"python -m bench.guidance: error: {path}:1: unknown state 'exploding'; one of " \
        "steady, steady_late, plateau, overfitting, diverging, unclear"

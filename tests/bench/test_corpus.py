"""The project's instruction corpus (``bench/cases``): both halves load as benchmark cases, and the test half
stays apart from the development half the readers are tuned on."""

from __future__ import annotations

from pathlib import Path

from bench.guidance_cases import load_cases

CASES = Path(__file__).resolve().parents[2] / "bench" / "cases"


def test_both_halves_load_and_the_test_half_shares_no_instruction_with_development():
    development, test = load_cases(CASES / "dev.jsonl"), load_cases(CASES / "test.jsonl")
    assert len(development) + len(test) >= 300 and len(test) >= 200
    assert not {c.instruction for c in test if c.instruction} & {c.instruction for c in development if c.instruction}
    languages = {"en", "es", "fr", "de", "pt", "zh", "ja"}
    assert languages <= {c.lang for c in test} and languages <= {c.lang for c in development}
    for half in (development, test):
        kinds = {(c.kind, c.hold) for c in half}
        assert {("explicit", False), ("goal", False), ("explicit", True), ("evidence", False)} <= kinds

"""The coverage table's pure logic: verdicts, rendering, the README section, the catalogue."""

from __future__ import annotations

import pytest

from coverage_table import table
from coverage_table.run import HEAVY_NOTE, README, RESULTS, check, infrastructure_failure, load_results, rows_for
from coverage_table.specimens import DISTRIBUTIONS, SPECIMENS
from coverage_table.table import FAIL, NOT_APPLICABLE, PASS, Row, SectionMissing, Verdict

REPORT = {"generation": 3, "restored": ["a"], "recomputed": [], "lost": {}, "mismatched": {}, "unverified": {},
          "rerun_cells": [], "notes": []}


def observation(path: str, *, after: str = "f1", error: str | None = None, variables: dict | None = None,
                **report: object) -> dict:
    return {
        "key": "numpy-ndarray", "setup_error": None, "before": "f1", "generation": 3,
        "variables": {"a": {"type": "numpy.ndarray"}} if variables is None else variables,
        "paths": {path: {"after": after, "error": error, "report": {**REPORT, **report}}},
    }


def test_equal_fingerprint_and_loaded_is_a_pass():
    assert table.judge("migrate", ["a"], observation("migrate")) == Verdict(PASS)


def test_a_different_fingerprint_fails_with_the_reason():
    verdict = table.judge("crash", ["a"], observation("crash", after="f2"))
    assert verdict.mark == FAIL and "fingerprint differs" in verdict.reason


def test_migrate_of_a_value_the_checkpoint_could_not_store_does_not_apply():
    variables = {"a": {"type": "_thread.lock", "recompute_only": "cannot pickle '_thread.lock' object"}}
    verdict = table.judge("migrate", ["a"], observation("migrate", variables=variables, restored=[]))
    assert verdict == Verdict(NOT_APPLICABLE, "cannot be stored: a: cannot pickle '_thread.lock' object")


def test_recompute_that_the_agent_refuses_does_not_apply_but_a_crash_loss_fails():
    lost = {"a": "not serializable, and its cell [1] is nondeterministic"}
    verdict = table.judge("recompute", ["a"], observation("recompute", lost=lost))
    assert verdict == Verdict(NOT_APPLICABLE, "not rebuilt: a: its cell [1] is nondeterministic")
    crash = table.judge("crash", ["a"], observation("crash", lost=lost, error="the fingerprint raised NameError"))
    assert crash == Verdict(FAIL, f"lost: a: {lost['a']}")
    broken = table.judge("crash", ["a"], observation("crash", error="the fingerprint raised NameError"))
    assert broken == Verdict(FAIL, "the fingerprint raised NameError")


def test_a_forced_path_that_took_the_other_way_fails():
    verdict = table.judge("recompute", ["a"], observation("recompute"))  # loaded, not recomputed
    assert verdict == Verdict(FAIL, "not rebuilt: a")
    assert table.judge("recompute", ["a"], observation("recompute", restored=[], recomputed=["a"])).mark == PASS


def test_the_agents_own_mismatch_fails_even_with_equal_fingerprints():
    differs = {"a": "loaded value's fingerprint differs"}
    verdict = table.judge("crash", ["a"], observation("crash", mismatched=differs))
    assert verdict.mark == FAIL and verdict.reason.startswith("equal by this table's fingerprint, but the report")
    verdict = table.judge("crash", ["a"], observation("crash", after="f2", mismatched=differs))
    assert verdict == Verdict(FAIL, "the restore report says DIFFERS: a: loaded value's fingerprint differs")


def test_setup_errors_and_missing_variables_fail():
    broken = {**observation("crash"), "setup_error": "setup cell 1 raised ModuleNotFoundError: No module named 'x'"}
    assert table.judge("crash", ["a"], broken).reason.startswith("setup cell 1 raised")
    verdict = table.judge("crash", ["a", "b"], observation("crash"))
    assert verdict == Verdict(FAIL, "not in the checkpoint: b")


def test_reasons_lose_addresses_pipes_and_newlines():
    assert table.clean("<function f at 0x7f3a2b1c0d90> a|b\n  c") == "<function f at 0x…> a/b c"
    assert len(table.clean("x" * 500, limit=50)) == 50


def test_render_numbers_each_distinct_reason_once():
    failing = Verdict(FAIL, "lost: x")
    rows = [Row("ndarray", "numpy", "2.0", {"migrate": Verdict(PASS), "recompute": failing, "crash": failing}),
            Row("tensor", "PyTorch", "2.13.0", {p: Verdict(PASS) for p in table.PATHS}, heavy=True)]
    text = table.render(rows, "heavy note")
    assert "| numpy | 2.0 | ndarray | ✅ | ❌ [1] | ❌ [1] |" in text
    assert "| PyTorch | 2.13.0 \\* | tensor | ✅ | ✅ | ✅ |" in text
    assert text.count("1. lost: x") == 1 and "\\* heavy note" in text
    assert text.startswith(f"2 specimens, 2 libraries: 4 {PASS}, 0 {NOT_APPLICABLE}, 2 {FAIL} (of 6).")


def test_replace_section_keeps_everything_outside_the_markers():
    readme = f"# t\n\nbefore\n{table.START}\nold\n{table.END}\nafter\n"
    new = table.replace_section(readme, "new table")
    assert new == f"# t\n\nbefore\n{table.START}\nnew table\n{table.END}\nafter\n"
    assert table.section(new) == "new table"
    with pytest.raises(SectionMissing):
        table.section("no markers")
    with pytest.raises(SectionMissing):
        table.section(readme + readme)


def test_catalogue_is_big_enough_and_well_formed():
    keys = [s.key for s in SPECIMENS]
    assert len(keys) == len(set(keys)) >= 45
    assert len({s.library for s in SPECIMENS}) >= 15
    for specimen in SPECIMENS:
        assert specimen.library in DISTRIBUTIONS
        for code in specimen.cells:
            compile(code, specimen.key, "exec")
        compile(specimen.fingerprint, specimen.key, "eval")
        assert specimen.names


def test_readme_section_matches_the_committed_results():
    """`make coverage-table` writes both; a hand edit of either (or a stale one) shows here."""
    cached = load_results(RESULTS)
    assert set(cached["specimens"]) == {s.key for s in SPECIMENS}, "run `make coverage-table`"
    rows = rows_for(SPECIMENS, {}, cached, cached_versions=True)
    assert table.section(README.read_text()) == table.render(rows, HEAVY_NOTE)


def test_only_the_probes_own_failures_are_retried():
    assert infrastructure_failure({"setup_error": "the probe exited 1: Kernel died before replying"}) is not None
    failed_path = observation("crash", error="the probe failed: TimeoutError: no kernel child")
    assert infrastructure_failure(failed_path) == "the probe failed: TimeoutError: no kernel child"
    assert infrastructure_failure(observation("crash", error="the fingerprint raised NameError: x")) is None
    assert infrastructure_failure({"setup_error": "setup cell 1 raised ModuleNotFoundError: x"}) is None


def test_check_fails_on_any_difference_and_only_then(capsys):
    rows = [Row("ndarray", "numpy", "0.0-not-installed", {p: Verdict(PASS) for p in table.PATHS})]
    body = table.render(rows)
    assert check(body.strip("\n"), body, rows) == 0
    assert "the table says 0.0-not-installed was verified" in capsys.readouterr().out
    assert check(body.replace(PASS, FAIL, 1), body, rows) == 1
    assert "out of date" in capsys.readouterr().err

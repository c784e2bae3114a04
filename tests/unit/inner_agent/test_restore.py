"""Restore in a real IPython shell against a real store: plan, load, recompute, verify, report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell

from elastic_proxy.inner_agent import get_agent, load_ipython_extension, unload_ipython_extension
from elastic_proxy.inner_agent.restore import RestoreReport, restore, restore_session


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_PROXY_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("ELASTIC_PROXY_SESSION", "unit/restore")
    monkeypatch.setenv("ELASTIC_PROXY_RESTORE", "off")
    sh = InteractiveShell()
    load_ipython_extension(sh)
    yield sh
    unload_ipython_extension(sh)


def run(sh, code: str) -> None:
    result = sh.run_cell(code, store_history=True)
    assert result.success, (code, result.error_in_exec)


def fresh_namespace(sh) -> None:
    """What a new kernel process starts with: none of the user's names."""
    agent = get_agent(sh)
    agent.checkpointer.wait(timeout=60)
    for name in [n for n in sh.user_ns if agent.recorder.is_user_name(n)]:
        del sh.user_ns[name]


def test_report_renders_text_and_html_with_every_name():
    report = RestoreReport(session="s", generation=3, cell=7, restored=["a"], recomputed=["b"],
                           lost={"g": "a partially consumed generator <x>"}, mismatched={"m": "differs"},
                           unverified={"lock": "no fingerprint"}, rerun_cells=[2])
    text = report.to_text()
    for piece in ("generation 3", "cell [7]", "loaded: a", "recomputed: b", "[2]", "LOST g", "DIFFERS m",
                  "unverified lock"):
        assert piece in text
    html = report._repr_html_()
    assert "&lt;x&gt;" in html and "<table>" in html and "lost" in html
    assert report.mimebundle()["text/plain"] == text
    assert not report.complete
    empty = RestoreReport(session="s", notes=["no checkpoint for this session"])
    assert "nothing to restore" in empty.to_text()


def test_cheap_cells_recompute_random_values_load(shell):
    run(shell, "import numpy as np")
    run(shell, "z = np.zeros(20_000_000)")
    run(shell, "r = np.random.rand(20_000_000)")
    expected_r = shell.user_ns["r"].copy()
    fresh_namespace(shell)
    report = restore(shell, get_agent(shell).store)
    assert "z" in report.recomputed, report.to_text()
    assert "r" in report.restored, report.to_text()
    np.testing.assert_array_equal(shell.user_ns["r"], expected_r)
    assert not report.mismatched and not report.lost


@pytest.mark.parametrize("aliased", [False, True], ids=["alone", "aliased"])
def test_recompute_that_differs_is_replaced_by_the_stored_value_and_named(shell, monkeypatch, aliased):
    """The stored value wins over a different recompute; aliased names fall back to the stored copy
    together, from one load, so `holder[0] is e` still holds."""
    monkeypatch.setenv("ELASTIC_TEST_VALUE", "1.5")
    run(shell, "import numpy as np, os")
    alias = "\nholder = [e]" if aliased else ""
    run(shell, "e = np.full(20_000_000, float(os.environ['ELASTIC_TEST_VALUE']))" + alias)
    monkeypatch.setenv("ELASTIC_TEST_VALUE", "2.5")
    fresh_namespace(shell)
    report = restore(shell, get_agent(shell).store)
    assert "e" in report.mismatched, report.to_text()
    assert shell.user_ns["e"][0] == 1.5, "the stored value must win over a different recompute"
    if aliased:
        assert shell.user_ns["holder"][0] is shell.user_ns["e"], report.to_text()


def test_falls_back_to_previous_generation_when_newest_fails_verification(shell, tmp_path):
    run(shell, "a = list(range(100))")
    run(shell, "b = 'second'")
    store = get_agent(shell).store
    get_agent(shell).checkpointer.wait(timeout=60)
    newest, previous = [m for m in store.generations() if m.valid][:2]
    only_newest = {ref.stream for ref in newest.groups().values() if ref} - {
        ref.stream for ref in previous.groups().values() if ref
    }
    assert only_newest
    for address in only_newest:
        blob = next(Path(tmp_path / "store").rglob(address))
        blob.chmod(0o600)
        blob.write_bytes(b"tampered")
    fresh_namespace(shell)
    report = restore(shell, store)
    assert report.generation == previous.generation
    assert any(f"generation {newest.generation}" in note for note in report.notes), report.notes
    assert shell.user_ns["a"] == list(range(100)) and "b" not in shell.user_ns


def test_execution_count_in_and_out_come_back(shell):
    run(shell, "v = 6 * 7")
    run(shell, "v")
    shown = shell.execution_count - 1
    run(shell, "w = [v]")
    count = shell.execution_count
    fresh_namespace(shell)
    shell.history_manager.output_hist.clear()
    del shell.history_manager.input_hist_parsed[1:]
    del shell.history_manager.input_hist_raw[1:]
    shell.execution_count = 1
    restore(shell, get_agent(shell).store)
    assert shell.execution_count == count
    assert shell.user_ns["Out"][shown] == 42 and shell.user_ns[f"_{shown}"] == 42
    assert shell.user_ns["In"][shown] == "v"


def test_time_travel_status_and_reset(shell, capsys):
    run(shell, "x = 1")
    run(shell, "x = 2\ny = 'later'")
    count_after_first = shell.execution_count - 2
    run(shell, f"%elastic restore {count_after_first}")
    assert shell.user_ns["x"] == 1 and "y" not in shell.user_ns
    run(shell, "x += 10")
    assert shell.user_ns["x"] == 11
    run(shell, "%elastic status")
    run(shell, "%elastic checkpoints")
    out = capsys.readouterr().out
    assert "last checkpoint: generation" in out and "elastic checkpoints of unit/restore" in out
    run(shell, "%elastic reset")
    assert "x" not in shell.user_ns
    assert get_agent(shell).store.generations() == []


def test_unserializable_generator_states(shell):
    run(shell, "fresh = (i for i in range(3))")
    run(shell, "used = (i for i in range(3))\nnext(used)")
    fresh_namespace(shell)
    report = restore(shell, get_agent(shell).store)
    assert "generator" in report.lost["used"]
    assert "fresh" in report.recomputed and list(shell.user_ns["fresh"]) == [0, 1, 2]
    assert os.environ["ELASTIC_PROXY_SESSION"] == report.session


def test_long_cell_logs_are_sealed_in_segments_and_read_back(shell, monkeypatch):
    import elastic_proxy.inner_agent.agent as agent_module

    monkeypatch.setattr(agent_module, "CELL_SEGMENT", 4)
    for i in range(13):
        run(shell, f"c{i} = [{i}]")
    store = get_agent(shell).store
    get_agent(shell).checkpointer.wait(timeout=60)
    body = store.latest().body
    assert len(body["cell_segments"]) == 2 and len(body["cells"]) == 5
    fresh_namespace(shell)
    restored = restore_session(shell, store)
    assert shell.user_ns["c0"] == [0] and shell.user_ns["c12"] == [12]
    assert [c.code for c in restored.graph.cells.values()] == [f"c{i} = [{i}]" for i in range(13)]

"""What the first cell of a kernel shows about the restore: nothing for a new session, the report
whenever a checkpoint existed (restored, or unusable and why)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from elastic_proxy.inner_agent import get_agent, load_ipython_extension, unload_ipython_extension
from elastic_proxy.inner_agent.supervisor_link import summary


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_PROXY_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(tmp_path / "secret"))
    monkeypatch.setenv("ELASTIC_PROXY_SESSION", "unit/reports")
    monkeypatch.setenv("ELASTIC_PROXY_RESTORE", "auto")
    monkeypatch.delenv("ELASTIC_PROXY_RESTORE_SKIPPED", raising=False)
    return tmp_path


class Kernel:
    """One in-process shell with the agent, as a kernel process would load it."""

    def __init__(self) -> None:
        self.shell = InteractiveShell.instance()
        load_ipython_extension(self.shell)
        self.agent = get_agent(self.shell)

    def cell(self, code: str) -> tuple[str, str]:
        """(stdout, text of every display) of one cell."""
        with capture_output() as captured:
            result = self.shell.run_cell(code, store_history=True)
        assert result.success, (code, result.error_in_exec)
        shown = "\n".join(out.data.get("text/plain", "") for out in captured.outputs)
        return captured.stdout, shown

    def close(self) -> None:
        self.agent.checkpointer.wait(timeout=60)
        unload_ipython_extension(self.shell)
        InteractiveShell.clear_instance()


def test_a_new_session_shows_nothing_in_its_first_cell(env):
    kernel = Kernel()
    try:
        stdout, shown = kernel.cell("x = 1")
        assert (stdout, shown) == ("", "")
        assert kernel.agent.last_report is not None and kernel.agent.last_report.generation is None
    finally:
        kernel.close()


def test_a_restore_is_reported_in_the_first_cell(env):
    first = Kernel()
    first.cell("x = 41")
    first.close()
    second = Kernel()
    try:
        _, shown = second.cell("y = x + 1")
        assert "elastic: restored generation" in shown and "loaded: x" in shown, shown
        assert second.shell.user_ns["y"] == 42
    finally:
        second.close()


def test_a_checkpoint_that_cannot_be_used_is_reported(env):
    first = Kernel()
    first.cell("x = 41")
    first.close()
    for manifest in Path(env / "store").rglob("manifests/*.json"):
        manifest.chmod(0o600)
        manifest.write_text(manifest.read_text().replace("41", "42", 1) + " ")
    second = Kernel()
    try:
        _, shown = second.cell("y = 1")
        assert "nothing to restore" in shown and "skipped generation" in shown, shown
        assert "x" not in second.shell.user_ns
    finally:
        second.close()


SESSION_WITH_A_BIG_ARRAY = [
    "import numpy as np",
    "big = np.random.rand(3_000_000)",       # 24 MB, unseeded: only loading can bring it back
    "part = big[:10]",                       # a view: same alias group as big
    "gen = (i * len(big) for i in range(3))",  # cannot be pickled; its cell reads big
    "mid = np.ones(100_000)",
    "small = [1, 2, 3]",
    "total = float(big.sum())",
]


def test_a_skipped_restore_lists_the_largest_variables_and_restore_skip_brings_back_the_rest(
    env, monkeypatch
):
    first = Kernel()
    for code in SESSION_WITH_A_BIG_ARRAY:
        first.cell(code)
        first.agent.checkpointer.wait(timeout=60)  # one generation per cell, for the time travel below
    expected_total = first.shell.user_ns["total"]
    first.close()

    monkeypatch.setenv("ELASTIC_PROXY_RESTORE", "off")
    monkeypatch.setenv("ELASTIC_PROXY_RESTORE_SKIPPED", "the previous kernel ran out of memory while restoring")
    second = Kernel()
    try:
        assert summary(len(SESSION_WITH_A_BIG_ARRAY))["restore"] is False  # what the supervisor asks first
        _, shown = second.cell("note = 'made in the new kernel'")
        assert "restore was skipped: the previous kernel ran out of memory while restoring" in shown, shown
        listed = [line.split() for line in shown.split("largest variables:")[1].splitlines()[1:6]]
        assert [row[0] for row in listed[:2]] == ["big", "mid"], shown
        assert listed[0][1] == "numpy.ndarray" and float(listed[0][2]) == pytest.approx(22.9, abs=0.2), shown
        assert "%elastic restore --skip big" in shown and "%elastic reset" in shown, shown
        assert "big" not in second.shell.user_ns
        second.agent.checkpointer.wait(timeout=60)  # the new kernel's cell is now the newest generation

        _, shown = second.cell("%elastic restore --skip big")
        ns = second.shell.user_ns
        assert "LOST big: skipped at your request" in shown, shown
        assert "LOST part: shares its objects with skipped big" in shown, shown
        assert "LOST gen: not serializable, and its cell [2] makes skipped big" in shown, shown
        assert not {"big", "part", "gen", "note"} & set(ns), sorted(ns)
        assert ns["small"] == [1, 2, 3] and ns["mid"].sum() == 100_000 and ns["total"] == expected_total
        second.agent.checkpointer.wait(timeout=60)
        newest = second.agent.store.latest()
        assert {"small", "mid", "total", "np"} <= set(newest["variables"]) and "big" not in newest["variables"]

        _, shown = second.cell("%elastic restore 6 --skip mid")
        assert "state after cell [6]" in shown and "LOST mid: skipped at your request" in shown, shown
        assert "mid" not in ns and "total" not in ns and ns["small"] == [1, 2, 3]
        assert isinstance(ns["big"], np.ndarray) and (ns["part"] == ns["big"][:10]).all()
    finally:
        second.close()


def test_a_skipped_restore_without_a_checkpoint_still_says_why(env, monkeypatch):
    monkeypatch.setenv("ELASTIC_PROXY_RESTORE", "off")
    monkeypatch.setenv("ELASTIC_PROXY_RESTORE_SKIPPED", "out of memory")
    kernel = Kernel()
    try:
        _, shown = kernel.cell("x = 1")
        assert "restore was skipped: out of memory" in shown and "no valid checkpoint" in shown, shown
        stdout, _ = kernel.cell("%elastic restore --skip")
        assert stdout.startswith("usage: %elastic") and "restore [N] --skip NAME" in stdout, stdout
    finally:
        kernel.close()

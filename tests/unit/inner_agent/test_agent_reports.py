"""What the first cell of a kernel shows about the restore: nothing for a new session, the report
whenever a checkpoint existed (restored, or unusable and why)."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from elastic_proxy.inner_agent import get_agent, load_ipython_extension, unload_ipython_extension


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

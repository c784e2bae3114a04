"""`python -m elastic_proxy.demo` (what `make demo` runs) as a user runs it: a subprocess that must
finish, exit 0 and print the lines that say each promise was checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastic_proxy.demo import format_table, headline, report_problems

pytestmark = pytest.mark.timeout(240)

ISOLATION_VARS = ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR",
                  "IPYTHONDIR", "ELASTIC_PROXY_STORE", "ELASTIC_PROXY_SECRET_FILE")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path: the supervisor puts its child's ipc sockets under
    JUPYTER_RUNTIME_DIR, their paths must fit in 107 bytes, and pytest's tmp_path is too long."""
    path = Path(tempfile.mkdtemp(prefix="epd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_every_step_and_says_what_it_checked(short_tmp: Path) -> None:
    # The test session's own Jupyter environment is removed, so the demo must set up its own; an empty
    # HOME and TMPDIR that are still empty afterwards show it touched nothing else and cleaned up.
    home, tmp = short_tmp / "home", short_tmp / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ISOLATION_VARS}
    env.update(HOME=str(home), TMPDIR=str(tmp))
    done = subprocess.run([sys.executable, "-m", "elastic_proxy.demo"], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "FAILED" not in out
    assert "array sha256" in out and "bit-identical" in out
    assert out.count("checked: array sha256") == 2  # after the SIGKILL and after the restart
    assert "KernelDied" in out and "SIGKILL" in out
    assert any("out of memory" in line and "600M" in line for line in out.splitlines())
    assert "elastic: restored generation" in out
    assert "All 5 steps behaved as promised" in out
    for step in ("1 cells", "2 SIGKILL mid-cell", "3 next cell restored", "4 out of memory", "5 restart"):
        assert any(line.startswith(step) and " ok " in line for line in out.splitlines()), step
    assert list(tmp.iterdir()) == [], "the demo left files behind"
    assert list(home.iterdir()) == [], "the demo wrote to the home directory"


def test_report_problems_names_lost_and_differing_variables() -> None:
    report = ("elastic: restored generation 3 (state after cell [4]): 2 loaded, 0 recomputed, 1 lost, 1 differ\n"
              "  loaded: a, b\n  LOST fh: file is gone\n  DIFFERS r: recomputed value differs\n"
              "  unverified g: a generator")
    assert report_problems(report) == ["LOST fh: file is gone", "DIFFERS r: recomputed value differs"]
    assert report_problems("elastic: restored generation 1 (state after cell [1]): 1 loaded\n  loaded: x") == []


def test_headline_keeps_what_was_restored_without_the_time() -> None:
    report = ("elastic: restored generation 3 (state after cell [3]): 10 loaded, 0 recomputed, 0 lost, 0 differ,"
              " in 0.62 s\n  loaded: a, b")
    assert headline(report) == "generation 3 (state after cell [3]): 10 loaded, 0 recomputed, 0 lost, 0 differ"


def test_format_table_aligns_columns() -> None:
    table = format_table([("STEP", "SECONDS"), ("1 cells", "3.50"), ("5 restart", "-")])
    assert table.splitlines() == ["STEP       SECONDS", "---------  -------", "1 cells    3.50",
                                  "5 restart  -"]

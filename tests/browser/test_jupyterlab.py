"""What a JupyterLab user sees when the elastic kernel's child dies, in a real browser.

Each test drives JupyterLab through its UI (keyboard, toolbar, menus), kills or restarts the kernel the way it
happens to users, and checks the notebook as rendered: the cell's error names the cause, the kernel indicator goes
back to idle, no dialog appears, and the next cell sees the old variables. Each test saves a screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.browser.conftest import OOM_KERNEL
from tests.browser.lab import Notebook

pytestmark = pytest.mark.timeout(300)

ELASTIC = "Python 3 (elastic)"
STOCK = "Python 3 (ipykernel)"
BUILD_STATE = "import numpy as np\nx = 41\nrows = {'a': [1, 2, 3]}\nnoise = np.random.rand(1000)\ntotal = noise.sum()"
SHOW_STATE = "print(x + 1, rows['a'], noise.sum() == total)"
STATE_SHOWN = "42 [1, 2, 3] True"
DEMO = Path(__file__).resolve().parents[2] / "examples" / "elastic-demo.ipynb"
# What JupyterLab's indicator shows when it believes the kernel restarted or died; a crash the supervisor
# absorbs must show none of them.
RESTART_STATUSES = {"restarting", "autorestarting", "dead", "terminating", "unknown", "starting", "connecting"}


def start_with_state(nb: Notebook, name: str, kernel: str = ELASTIC) -> int:
    """Open a new notebook on `kernel`, build some state, and return the pid the kernel reports."""
    nb.open(nb.server.write_notebook(name), kernel=kernel)
    nb.run(BUILD_STATE)
    return nb.child_pid()


def kill_running_cell(nb: Notebook, pid: int, code: str = "import time\ntime.sleep(600)") -> str:
    """SIGKILL the kernel's child from outside while a cell runs; return that cell's output."""
    cell = nb.start(code)
    nb.wait_running(cell)
    os.kill(pid, signal.SIGKILL)
    nb.wait_done(cell)
    return nb.output(cell)


def assert_state_back(nb: Notebook) -> str:
    text = nb.output(nb.run(SHOW_STATE))
    assert STATE_SHOWN in text, text
    return text


def assert_recovered_quietly(nb: Notebook, statuses_before: int) -> None:
    """After the crash: the indicator is idle and never showed a restart or death, the kernel's websocket never
    closed (JupyterLab would reconnect and say so); no dialog, no console error, no page reload."""
    nb.wait_idle(timeout=30)
    shown = nb.statuses()[statuses_before:]
    assert not RESTART_STATUSES & set(shown), shown
    assert nb.watch.kernel_socket_closes == 0
    nb.assert_clean()


def test_sigkill_of_the_child_shows_the_cause_and_keeps_the_variables(notebook: Notebook):
    pid = start_with_state(notebook, "sigkill.ipynb")
    before = len(notebook.statuses())
    error = kill_running_cell(notebook, pid)
    assert "KernelDied" in error and "SIGKILL" in error, error
    notebook.wait_idle(timeout=30)
    assert_state_back(notebook)
    notebook.screenshot("elastic-1-sigkill")
    assert_recovered_quietly(notebook, before)


def test_out_of_memory_under_memory_limit_says_so_in_the_cell(notebook: Notebook):
    if os.geteuid() != 0:
        pytest.skip("a memory cgroup for --memory-limit needs root")
    start_with_state(notebook, "oom.ipynb", kernel=OOM_KERNEL)
    before = len(notebook.statuses())
    cell = notebook.run("big = np.ones(3 * 1024**3 // 8)  # 3 GiB under a 1 GiB limit", timeout=120)
    error = notebook.output(cell)
    assert "KernelDied" in error and "out of memory" in error, error
    assert_state_back(notebook)
    missing = notebook.output(notebook.run("print('big' in globals())"))
    assert missing.strip() == "False", missing
    notebook.screenshot("elastic-2-oom")
    assert_recovered_quietly(notebook, before)


def test_restart_button_brings_the_variables_back_with_a_report(notebook: Notebook):
    start_with_state(notebook, "restart.ipynb")
    notebook.page.locator(".jp-NotebookPanel-toolbar [data-jp-item-name='restart'] jp-button").click()
    notebook.accept_dialog("Restart Kernel?")
    notebook.wait_idle(timeout=90)
    text = assert_state_back(notebook)
    assert re.search(r"elastic: restored generation \d+", text), text
    notebook.screenshot("elastic-3-restart")
    notebook.assert_clean()


def test_close_and_reopen_brings_the_variables_back(notebook: Notebook):
    start_with_state(notebook, "reopen.ipynb")
    notebook.page.keyboard.press("Control+s")
    notebook.menu("File", "Close and Shut Down Notebook…")
    notebook.accept_dialog("Shut down the notebook?")
    notebook.page.wait_for_selector(".jp-NotebookPanel", state="detached", timeout=30_000)
    assert notebook.server.api("GET", "/api/kernels") == []
    notebook.open("reopen.ipynb")  # the saved notebook names its kernel: no dialog this time
    text = assert_state_back(notebook)
    assert "elastic: restored generation" in text, text
    notebook.screenshot("elastic-4-reopen")
    notebook.assert_clean()


def test_widget_before_a_crash_is_closed_and_a_new_one_works(notebook: Notebook):
    pid = start_with_state(notebook, "widgets.ipynb")
    old = notebook.run("import ipywidgets as widgets\nbefore = widgets.IntSlider(value=5, description='before')\n"
                       "before")
    old.locator(".widget-slider").wait_for(timeout=30_000)
    before = len(notebook.statuses())
    kill_running_cell(notebook, pid)
    old.locator(".widget-slider").wait_for(state="detached", timeout=30_000)
    # The restore re-creates `before` by re-running its cell; the new child's widget shows and holds its value.
    again = notebook.run("before.value = 7\nbefore")
    again.locator(".widget-slider .widget-readout", has_text="7").wait_for(timeout=30_000)
    new = notebook.run("after = widgets.IntSlider(value=3, description='after')\nafter")
    handle = new.locator(".widget-slider .noUi-handle")
    handle.wait_for(timeout=30_000)
    handle.focus()
    notebook.page.keyboard.press("ArrowRight")
    notebook.page.keyboard.press("ArrowRight")
    new.locator(".widget-readout", has_text="5").wait_for(timeout=10_000)
    shown = notebook.output(notebook.run("print('kernel sees', after.value, 'and x =', x)"))
    assert "kernel sees 5 and x = 41" in shown, shown
    notebook.screenshot("elastic-5-widgets")
    assert_recovered_quietly(notebook, before)
    comm_errors = [line for line in notebook.watch.console
                   if line.startswith(("error:", "pageerror:")) and re.search("comm|widget", line, re.I)]
    assert not comm_errors, comm_errors


def answer_input(nb: Notebook, code: str, answer: str) -> str:
    cell = nb.start(code)
    box = cell.locator(".jp-Stdin-input")
    box.wait_for(timeout=30_000)
    box.fill(answer)
    box.press("Enter")
    nb.wait_done(cell)
    return nb.output(cell)


def test_input_works_before_and_after_a_crash(notebook: Notebook):
    pid = start_with_state(notebook, "input.ipynb")
    first = answer_input(notebook, "name = input('name? ')\nprint('hello', name)", "Ada")
    assert "hello Ada" in first, first
    before = len(notebook.statuses())
    kill_running_cell(notebook, pid)
    second = answer_input(notebook, "again = input('again? ')\nprint(name, 'and', again)", "Grace")
    assert "Ada and Grace" in second, second
    notebook.screenshot("elastic-6-input")
    assert_recovered_quietly(notebook, before)


def test_a_large_restore_shows_its_progress_in_the_waiting_cell(notebook: Notebook):
    pid = start_with_state(notebook, "progress.ipynb")
    # Unseeded: the restore must load these (a cell it could re-run, it may choose to recompute instead).
    notebook.run("more = np.random.rand(32 * 2**20)  # 256 MiB\nbig = np.random.rand(96 * 2**20)  # 768 MiB",
                 timeout=180)
    notebook.run("%elastic sync", timeout=300)
    before = len(notebook.statuses())
    os.kill(pid, signal.SIGKILL)
    cell = notebook.start("print(big.shape, more.shape, x)")
    # The display updates in place; catch it mid-restore (groups load smallest first: 256 of 1,024 MiB).
    progress = notebook.page.wait_for_function(
        "cell => { const t = cell.querySelector('.jp-OutputArea').innerText;"
        " return t.includes('restoring the session') ? t : false; }",
        arg=cell.element_handle(), polling="raf", timeout=180_000).json_value()
    notebook.screenshot("elastic-7-restore-progress")
    assert re.search(r"elastic-proxy: restoring the session \(\w+\): [\d,]+ of 1,024 MiB", progress), progress
    notebook.wait_done(cell, timeout=180)
    final = notebook.output(cell)
    assert "elastic-proxy: restored 1,024 MiB" in final and "(100663296,) (33554432,) 41" in final, final
    assert_recovered_quietly(notebook, before)


def test_the_demo_notebook_of_make_lab_runs_cell_by_cell(notebook: Notebook):
    """examples/elastic-demo.ipynb as a user runs it: Shift+Enter on each cell, one of which kills the kernel."""
    shutil.copyfile(DEMO, notebook.server.root_dir / DEMO.name)
    notebook.open(DEMO.name)  # the notebook names its kernel, python3-elastic
    code_cells = notebook.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
    outputs = []
    for index in range(code_cells.count()):
        cell = code_cells.nth(index)
        cell.locator(".cm-content").click()
        notebook.page.keyboard.press("Shift+Enter")
        notebook.wait_done(cell, timeout=120)
        outputs.append(notebook.output(cell))
    died = [text for text in outputs if "KernelDied" in text]
    assert len(died) == 1 and "SIGKILL" in died[0], outputs
    after = outputs[outputs.index(died[0]) + 1]
    assert "elastic: restored generation" in after and "(1000, 1000)" in after, after
    assert code_cells.nth(outputs.index(died[0]) + 2).locator(".widget-slider").count() == 1
    notebook.wait_idle()
    code_cells.nth(outputs.index(died[0])).evaluate("cell => cell.scrollIntoView({block: 'start'})")
    notebook.screenshot("elastic-0-demo")
    notebook.assert_clean()


def test_stock_ipykernel_shows_a_dialog_and_loses_the_variables(notebook: Notebook):
    """The comparison: the same SIGKILL under the stock kernel, as JupyterLab shows it."""
    pid = start_with_state(notebook, "stock.ipynb", kernel=STOCK)
    cell = notebook.start("import time\ntime.sleep(600)")
    notebook.wait_running(cell)
    os.kill(pid, signal.SIGKILL)
    dialog = notebook.page.locator(".jp-Dialog", has_text="Kernel Restarting")
    dialog.wait_for(timeout=30_000)
    notebook.screenshot("stock-1-sigkill-dialog")
    notebook.accept_dialog("Kernel Restarting")
    notebook.wait_idle(timeout=60)
    lost = notebook.output(notebook.run(SHOW_STATE))
    assert "NameError" in lost, lost
    notebook.screenshot("stock-2-variables-gone")

"""A real JupyterLab server on loopback and a Playwright page driving it as a user would.

The server runs in the test session's private Jupyter environment (tests/conftest.py's
`jupyter_env`), so its kernelspecs, settings, workspaces and checkpoints are the test's own.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

CHROMIUM = "/usr/bin/chromium"
# Headless Chromium as root on a machine whose only network is loopback: no sandbox (root), no GPU, and no
# background traffic (update checks, sync, QUIC probes) whose refused connections would clutter the console.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]
# JupyterLab's own news and update checks would reach the internet and pop a toast over the notebook.
QUIET_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                  {"fetchNews": "false", "checkForUpdates": False}}
# Records every JupyterLab modal (`.jp-Dialog`, a DOM element, not a JS dialog) and toast as it appears, and
# every value the notebook's kernel indicator takes, so what shows between two checks is still seen.
WATCH_MODALS = """
window.__modals = [];
window.__statuses = [];
const seen = [];
new MutationObserver(() => {
  const indicator = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const status = indicator && indicator.getAttribute('data-status');
  if (status && window.__statuses[window.__statuses.length - 1] !== status) window.__statuses.push(status);
  for (const el of document.querySelectorAll('.jp-Dialog, .Toastify__toast')) {
    if (!seen.some(s => s.el === el)) {
      const entry = {kind: el.classList.contains('jp-Dialog') ? 'dialog' : 'toast', title: '', text: ''};
      seen.push({el, entry});
      window.__modals.push(entry);
    }
  }
  for (const {el, entry} of seen) {  // a modal's text is rendered after the modal itself
    if (!el.isConnected) continue;
    const head = el.querySelector('.jp-Dialog-header');
    entry.title = (head || el).innerText.trim() || entry.title;
    entry.text = el.innerText.trim() || entry.text;
  }
}).observe(document, {childList: true, subtree: true, characterData: true, attributes: true,
                      attributeFilter: ['data-status']});
"""
PROMPT_DONE = re.compile(r"\[\d+\]:")


FRAME_FIELDS = re.compile(rb'"(msg_type|channel|comm_id|execution_state|target_name|msg_id)": ?"([^"]*)"')


def summarize_frame(payload: str | bytes) -> str:
    """The routing fields of one kernel websocket frame (JSON, or JupyterLab's binary v1 framing)."""
    raw = payload.encode() if isinstance(payload, str) else payload
    fields = [f"{k.decode()}={v.decode()[:40]}" for k, v in FRAME_FIELDS.findall(raw)]
    channel = re.search(rb"(shell|iopub|stdin|control)", raw[:200])
    return f"{channel.group(1).decode() if channel else '?'} {' '.join(fields)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    url: str
    token: str
    root_dir: Path

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_all_kernels(self) -> None:
        """Between tests: no kernel of a finished test keeps running (or checkpointing) behind the next."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")
        for kernel in self.api("GET", "/api/kernels"):
            self.api("DELETE", f"/api/kernels/{kernel['id']}")

    def write_notebook(self, name: str) -> str:
        """An empty notebook with no kernel recorded, so opening it asks which kernel to use."""
        notebook = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                               "source": ""}],
                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        (self.root_dir / name).write_text(json.dumps(notebook))
        return name


@contextmanager
def jupyterlab(root_dir: Path, settings_dir: Path, log_path: Path, timeout: float = 90) -> Iterator[LabServer]:
    """`jupyter lab` on a free loopback port with a random token, in this process's Jupyter environment."""
    for name, value in QUIET_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(24)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root_dir}", f"--IdentityProvider.token={token}",
        "--LabApp.news_url=", "--ServerApp.terminals_enabled=False",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
           "JUPYTERLAB_WORKSPACES_DIR": str(settings_dir.parent / "workspaces")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = LabServer(f"http://127.0.0.1:{port}", token, root_dir)
    try:
        _wait_until_up(server, process, timeout, log_path)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(server: LabServer, process: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            server.api("GET", "/api/status")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.25)
    raise RuntimeError(f"jupyter lab did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


@dataclass
class PageWatch:
    """What the page showed that a user would count as a failure: console errors, JS dialogs, modals."""

    console: list[str] = field(default_factory=list)
    js_dialogs: list[str] = field(default_factory=list)
    kernel_messages: list[str] = field(default_factory=list)
    kernel_socket_closes: int = 0
    page_loads: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.add_init_script(WATCH_MODALS)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("dialog", self._js_dialog)
        page.on("websocket", self._websocket)
        page.on("load", lambda loaded: self.page_loads.append(loaded.url))  # not JupyterLab's own URL updates

    def _websocket(self, ws: Any) -> None:
        """Log the kernel messages each way (type, channel, comm, status; no contents): evidence for a failure."""
        if "/api/kernels/" not in ws.url:
            return
        ws.on("framesent", lambda payload: self.kernel_messages.append(f"-> {summarize_frame(payload)}"))
        ws.on("framereceived", lambda payload: self.kernel_messages.append(f"<- {summarize_frame(payload)}"))
        ws.on("close", self._kernel_socket_closed)

    def _kernel_socket_closed(self, _ws: Any) -> None:
        self.kernel_socket_closes += 1
        self.kernel_messages.append("websocket closed")

    def _js_dialog(self, dialog: Any) -> None:
        self.js_dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def kernel_errors(self) -> list[str]:
        return [line for line in self.console
                if line.startswith(("error:", "pageerror:")) and "kernel" in line.lower()]


class Notebook:
    """One notebook tab in JupyterLab, driven through the UI: keyboard, toolbar, menus."""

    def __init__(self, page: Page, server: LabServer, watch: PageWatch, shots: Any) -> None:
        self.page, self.server, self.watch, self.shots = page, server, watch, shots
        self.expected_modals: set[str] = set()
        self.expected_page_loads = 0

    # --- opening ---------------------------------------------------------------------------
    def open(self, path: str, kernel: str | None = None) -> None:
        """Open `path` in a fresh workspace; `kernel` is picked in JupyterLab's "Select Kernel" dialog."""
        workspace = secrets.token_hex(4)
        self.expected_page_loads += 1
        self.page.goto(f"{self.server.url}/lab/workspaces/{workspace}/tree/{path}?token={self.server.token}")
        if kernel is not None:
            self.expected_modals.add("Select Kernel")
            self.page.wait_for_selector(".jp-Dialog select", timeout=60_000)
            self.page.select_option(".jp-Dialog select", label=kernel)
            self.page.click(".jp-Dialog .jp-mod-accept")
        self.page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
        self._hide_sidebar()
        # Before its kernel is attached, the toolbar indicator of a notebook already says idle: wait for the
        # status bar to name a kernel that is idle (a cell run earlier would ask which kernel to use).
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
            ".some(e => / \\| Idle$/.test(e.innerText) && !e.innerText.startsWith('No Kernel'))",
            timeout=90_000)
        self.wait_idle(timeout=90)

    def _hide_sidebar(self) -> None:
        if self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
            self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()

    # --- state -----------------------------------------------------------------------------
    @property
    def indicator(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator")

    def status(self) -> str:
        return self.indicator.get_attribute("data-status") or ""

    def wait_idle(self, timeout: float = 60) -> None:
        """The toolbar's kernel indicator says idle (JupyterLab's status, from the kernel's iopub status)."""
        self.page.wait_for_selector(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']",
            timeout=timeout * 1000)

    def cells(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index: int) -> Locator:
        return self.cells().nth(index)

    @staticmethod
    def output(cell: Locator) -> str:
        return cell.locator(".jp-OutputArea").inner_text()

    # --- running ---------------------------------------------------------------------------
    def start(self, code: str) -> Locator:
        """Type `code` into the last cell and run it (Shift+Enter) without waiting for it to finish."""
        index = self.cells().count() - 1
        cell = self.cell(index)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        return cell

    def run(self, code: str, timeout: float = 60) -> Locator:
        """Run `code` in a new last cell and wait until its prompt shows an execution count."""
        cell = self.start(code)
        self.wait_done(cell, timeout)
        return cell

    def wait_done(self, cell: Locator, timeout: float = 60) -> None:
        prompt = cell.locator(".jp-InputArea-prompt")
        deadline = time.monotonic() + timeout
        while not PROMPT_DONE.fullmatch(prompt.inner_text().strip()):
            if time.monotonic() > deadline:
                raise AssertionError(f"cell still running after {timeout} s: {prompt.inner_text()!r}\n"
                                     f"{self.output(cell)}")
            time.sleep(0.1)

    def wait_running(self, cell: Locator, timeout: float = 30) -> None:
        """The cell's prompt shows `[*]` and the kernel says busy: the code is executing."""
        cell.locator(".jp-InputArea-prompt", has_text="*").wait_for(timeout=timeout * 1000)
        self.page.wait_for_selector(
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='busy']",
            timeout=timeout * 1000)

    def child_pid(self) -> int:
        """The pid of the process running the user's code, as the kernel itself reports it."""
        cell = self.run("import os\nprint(os.getpid())")
        return int(self.output(cell).strip())

    # --- UI actions -----------------------------------------------------------------------
    def menu(self, *path: str) -> None:
        """Click through the menu bar: menu("Kernel", "Restart Kernel…")."""
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(path[0])}$")).click()
        for label in path[1:]:
            item = self.page.locator(".lm-Menu:visible .lm-Menu-itemLabel",
                                     has_text=re.compile(f"^{re.escape(label)}$"))
            item.click()

    def accept_dialog(self, title: str) -> None:
        """Accept a dialog the test itself asked for (a restart confirmation, not a crash report)."""
        self.expected_modals.add(title)
        dialog = self.page.locator(".jp-Dialog", has=self.page.locator(".jp-Dialog-header", has_text=title))
        dialog.wait_for(timeout=30_000)
        dialog.locator(".jp-mod-accept").click()
        dialog.wait_for(state="detached", timeout=30_000)

    def screenshot(self, name: str) -> Path:
        return self.shots(self.page, name)

    # --- what the user saw ------------------------------------------------------------------
    def statuses(self) -> list[str]:
        """Every kernel status the toolbar indicator showed since the page opened, repeats collapsed."""
        return self.page.evaluate("window.__statuses || []")

    def modals(self) -> list[dict[str, str]]:
        return self.page.evaluate("window.__modals || []")

    def unexpected_modals(self) -> list[dict[str, str]]:
        return [m for m in self.modals() if m["title"] not in self.expected_modals]

    def assert_clean(self) -> None:
        """No dialog, JS or JupyterLab's, that the test did not ask for; no console error about the kernel; no page
        load but those the test made."""
        problems = {"modals": self.unexpected_modals(), "js dialogs": self.watch.js_dialogs,
                    "console errors about the kernel": self.watch.kernel_errors(),
                    "page reloads": self.watch.page_loads[self.expected_page_loads:]}
        assert not any(problems.values()), problems

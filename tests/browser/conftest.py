"""Fixtures for the browser suite: one JupyterLab server and one Chromium for the session, a fresh page per test.

The Jupyter environment is the one tests/conftest.py makes private for every test session (its own kernelspecs,
store, secret, runtime dirs). Screenshots go to `<pytest tmp>/artifacts/`; with ELASTIC_PROXY_DOCS_IMAGES=DIR they
are also copied there (`make test-browser-images` refreshes docs/images/).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser.lab import CHROMIUM, CHROMIUM_ARGS, LabServer, Notebook, PageWatch, jupyterlab

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# `pytest tests` in a venv without the browser extra (make test-matrix) collects nothing here. make test-browser
# installs the extra; were Playwright missing all the same, pytest would collect no test and exit 5, a failure.
if importlib.util.find_spec("playwright") is None:
    collect_ignore_glob = ["test_*.py"]

VIEWPORT = {"width": 1100, "height": 640}
OOM_KERNEL = "Python 3 (elastic, 1 GiB)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so the page fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts", numbered=False)


@pytest.fixture(scope="session")
def lab(jupyter_env: Path, artifacts: Path) -> Iterator[LabServer]:
    """JupyterLab with python3-elastic, an OOM variant under a 1 GiB memory cgroup, and the stock python3."""
    subprocess.run([sys.executable, "-m", "elastic_proxy", "install", "--prefix", str(jupyter_env / "prefix"),
                    "--memory-limit", "1G", "--name", "python3-elastic-1g", "--display-name", OOM_KERNEL],
                   check=True, capture_output=True)
    notebooks = jupyter_env / "notebooks"
    notebooks.mkdir()
    with jupyterlab(notebooks, jupyter_env / "lab-settings", artifacts / "jupyterlab.log") as server:
        yield server


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install_browser.sh (make test-browser does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def shots(artifacts: Path, request: pytest.FixtureRequest):
    """Save a screenshot as a test artifact, and into ELASTIC_PROXY_DOCS_IMAGES when that is set."""
    docs = os.environ.get("ELASTIC_PROXY_DOCS_IMAGES")

    def save(page: Page, name: str) -> Path:
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path))
        if docs:
            Path(docs).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(docs) / path.name)
        return path

    return save


@pytest.fixture
def notebook(lab: LabServer, browser: Browser, shots, artifacts: Path,
             request: pytest.FixtureRequest) -> Iterator[Notebook]:
    """A fresh page on the server; after the test, every kernel is shut down and the page's console saved."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    watch = PageWatch()
    watch.attach(page)
    try:
        yield Notebook(page, lab, watch, shots)
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            page.screenshot(path=str(artifacts / f"{request.node.name}.failed.png"))
    finally:
        (artifacts / f"{request.node.name}.console.log").write_text("\n".join(watch.console))
        (artifacts / f"{request.node.name}.kernel-messages.log").write_text("\n".join(watch.kernel_messages))
        context.close()
        lab.shutdown_all_kernels()

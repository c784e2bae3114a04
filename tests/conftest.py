"""Shared fixtures: an isolated Jupyter environment with the elastic kernelspec installed.

Every test session gets its own JUPYTER_PATH / data / runtime dirs and its own checkpoint store
and secret, so tests never touch the developer's real kernels or checkpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_NAME = "python3-elastic"


def _install_kernelspec(prefix: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "elastic_proxy", "install", "--prefix", str(prefix), *args],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="session", autouse=True)
def jupyter_env(tmp_path_factory: pytest.TempPathFactory):
    """Point Jupyter and elastic-proxy at private directories for the whole test session."""
    root = tmp_path_factory.mktemp("jupyter")
    prefix = root / "prefix"
    env = {
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "ELASTIC_PROXY_STORE": str(root / "store"),
        "ELASTIC_PROXY_SECRET_FILE": str(root / "secret"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(root / "ipython"),  # test kernels must not write the developer's history
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _install_kernelspec(prefix)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def kernel_prefix(jupyter_env: Path) -> Path:
    """The prefix whose share/jupyter/kernels holds the test kernelspecs (for extra installs)."""
    return jupyter_env / "prefix"

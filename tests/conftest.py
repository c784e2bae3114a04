"""Shared fixtures: an isolated Jupyter environment with the elastic kernelspec installed.

Every test session gets its own JUPYTER_PATH / data / runtime dirs and its own checkpoint store
and secret, so tests never touch the developer's real kernels or checkpoints.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from elastic_proxy.testing_env import private_jupyter


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The S3 tests need s3fs and moto, which the test extra installs on Python 3.10+ only."""
    if all(importlib.util.find_spec(name) for name in ("s3fs", "moto")):
        return
    skip = pytest.mark.skip(reason="needs s3fs and moto (the test extra installs them on Python 3.10+)")
    for item in items:
        if "s3" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def jupyter_env(tmp_path_factory: pytest.TempPathFactory):
    """Point Jupyter and elastic-proxy at private directories for the whole test session."""
    root = tmp_path_factory.mktemp("jupyter")
    with private_jupyter(root):
        yield root


@pytest.fixture
def kernel_prefix(jupyter_env: Path) -> Path:
    """The prefix whose share/jupyter/kernels holds the test kernelspecs (for extra installs)."""
    return jupyter_env / "prefix"

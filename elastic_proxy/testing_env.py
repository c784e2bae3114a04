"""A private Jupyter environment for driving real elastic kernels (tests, the demo, the coverage table).

Everything Jupyter, IPython and elastic-proxy write (kernelspecs, connection files, checkpoints, the
store's secret, IPython's history) goes under one directory, so a run never touches the user's own
kernels or checkpoints. Kernel children inherit it through the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KERNEL_NAME = "python3-elastic"


def private_env(root: Path) -> dict[str, str]:
    """The environment variables that point Jupyter, IPython and elastic-proxy under `root`."""
    prefix = root / "prefix"
    return {
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "IPYTHONDIR": str(root / "ipython"),  # kernels must not write the developer's history
        "ELASTIC_PROXY_STORE": str(root / "store"),
        "ELASTIC_PROXY_SECRET_FILE": str(root / "secret"),
    }


def install_kernelspec(prefix: Path, *args: str) -> None:
    """`elastic-proxy install --prefix PREFIX ARGS` with this interpreter; raises with its stderr."""
    command = [sys.executable, "-m", "elastic_proxy", "install", "--prefix", str(prefix), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command[1:])}` failed: {done.stderr.strip()}")


def install_variant(prefix: Path, name: str, *args: str, base: str = KERNEL_NAME) -> str:
    """A copy of an installed elastic kernelspec with extra supervisor options appended to argv."""
    kernels = prefix / "share" / "jupyter" / "kernels"
    spec = json.loads((kernels / base / "kernel.json").read_text())
    spec["argv"] = [*spec["argv"], *args]
    spec["display_name"] = name
    (kernels / name).mkdir(parents=True, exist_ok=True)
    (kernels / name / "kernel.json").write_text(json.dumps(spec))
    return name


@contextmanager
def private_jupyter(root: Path) -> Iterator[dict[str, str]]:
    """Point this process (and so every kernel it starts) at directories under `root`, with the
    python3-elastic kernelspec installed there; the previous environment is put back at exit."""
    env = private_env(root)
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    for directory in ("config", "runtime"):
        (root / directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        install_kernelspec(root / "prefix")
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def control_request(kc: Any, msg_type: str, content: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    """Send a control request and return its reply's content (replies to other requests are skipped)."""
    msg = kc.session.msg(msg_type, content)
    kc.control_channel.send(msg)
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.control_channel.get_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply["content"]


def child_pid(kc: Any, timeout: float = 30, not_pid: int | None = None) -> int:
    """The pid of the process running the notebook's code, from usage_request on control (as
    jupyter-resource-usage asks). While a child is being respawned the reply has no pid yet, so ask
    again until it has one (other than `not_pid`, a child known to be dead)."""
    deadline = time.monotonic() + timeout
    while True:
        content = control_request(kc, "usage_request", {}, max(deadline - time.monotonic(), 0.1))
        pid = content.get("pid")
        if pid is not None and pid != not_pid:
            return int(pid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"usage_request named no kernel child within {timeout} s")
        time.sleep(0.1)

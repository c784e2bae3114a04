"""Helpers for end-to-end tests: real kernels started the way Jupyter starts them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
from jupyter_client import BlockingKernelClient, KernelManager

# Re-exported: the tests import them from here, beside the helpers below.
from elastic_proxy.testing_env import KERNEL_NAME as KERNEL_NAME
from elastic_proxy.testing_env import child_pid as child_pid
from elastic_proxy.testing_env import control_request as control_request
from elastic_proxy.testing_env import install_variant as install_variant


@contextmanager
def elastic_kernel(kernel_name: str = KERNEL_NAME, *, env: dict[str, str] | None = None, replace_env: bool = False,
                   **km_kwargs: Any) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """Start a kernel through jupyter_client's KernelManager and yield it with a ready client.

    `env` is added to this process's environment, or with `replace_env` is the whole of it."""
    km = KernelManager(kernel_name=kernel_name, **km_kwargs)
    km.start_kernel(env=dict(env or {}) if replace_env else {**os.environ, **(env or {})})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)


def second_client(km: KernelManager) -> BlockingKernelClient:
    """Another client of the same kernel with its own session, hence its own socket identity.

    (`km.client()` shares the manager's session: with router_handover, the newer client would
    take over the first one's identity and its replies.)
    """
    client = BlockingKernelClient()
    client.load_connection_info(km.get_connection_info())
    client.start_channels()
    return client


def supervisor_process(km: KernelManager) -> psutil.Process:
    return psutil.Process(km.provisioner.process.pid)


def run(kc: BlockingKernelClient, code: str, timeout: float = 60, **kw: Any) -> tuple[dict, list[dict]]:
    """Execute and return (execute_reply content, IOPub messages for it, in order, excluding status)."""
    outputs: list[dict] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=outputs.append, **kw)
    return reply["content"], [m for m in outputs if m["msg_type"] != "status"]


def stdout_of(outputs: list[dict]) -> str:
    return "".join(m["content"]["text"] for m in outputs
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_new_child(kc: BlockingKernelClient, old_pid: int, timeout: float = 30) -> int:
    """Wait until usage_request names a live child other than `old_pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = control_request(kc, "usage_request", {}, timeout=deadline - time.monotonic()).get("pid")
        if pid is not None and pid != old_pid and psutil.pid_exists(pid):
            return pid
        time.sleep(0.1)
    raise AssertionError("no new kernel child appeared")


def drain(channel: Any, quiet: float = 0.3) -> list[dict]:
    """All messages on a client channel until it stays quiet for `quiet` seconds.

    (jupyter_client's `get_msgs()` polls without a timeout and blocks forever once empty.)
    """
    from queue import Empty

    msgs = []
    while True:
        try:
            msgs.append(channel.get_msg(timeout=quiet))
        except Empty:
            return msgs

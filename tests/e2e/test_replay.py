"""Replay-only recovery (level 2): kernels without the agent get their completed cells re-run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.harness import child_pid, elastic_kernel, install_variant, run, stdout_of

pytestmark = pytest.mark.timeout(180)


def kill_child(kc) -> None:
    import os
    import signal

    os.kill(child_pid(kc), signal.SIGKILL)


def test_python_without_the_agent_is_rebuilt_by_replay(kernel_prefix):
    name = install_variant(kernel_prefix, "elastic-no-agent", "--no-agent")
    with elastic_kernel(name) as (_, kc):
        run(kc, "x = 20")
        run(kc, "x += 1")
        run(kc, "undefined_name")  # failed: never replayed
        kill_child(kc)
        reply, outputs = run(kc, "print(x * 2)")
        assert reply["status"] == "ok", reply
        assert stdout_of(outputs) == "42\n"
        notice = "".join(m["content"]["text"] for m in outputs
                         if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
        assert "re-running the completed cells [1], [2]" in notice, notice


def test_wrapped_bash_kernel_is_rebuilt_by_replay(kernel_prefix):
    subprocess.run([sys.executable, "-m", "bash_kernel.install", "--prefix", str(kernel_prefix)],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "elastic_proxy", "wrap", "bash", "--prefix", str(kernel_prefix)],
                   check=True, capture_output=True)
    with elastic_kernel("bash-elastic") as (_, kc):
        run(kc, "GREETING=hello")
        run(kc, "GREETING=$GREETING-world")
        kill_child(kc)
        reply, outputs = run(kc, "echo $GREETING")
        assert reply["status"] == "ok"
        assert "hello-world" in stdout_of(outputs)

"""The product's promise, end to end: after an idle kill, a mid-cell kill, an OOM, a segfault, a restart or a
reopen, the state is the state after the last completed cell, exactly, or the difference is named."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client import KernelManager

from tests.e2e.harness import child_pid, elastic_kernel, install_variant, run, stdout_of

pytestmark = pytest.mark.timeout(240)

SETUP = [
    "import numpy as np, itertools",
    "noise = np.random.rand(512, 1024)  # unseeded: a re-run would give other values",
    "window = noise[3:7, :5]  # a view: it must still share noise's memory after a restore",
    "small = {'a': 1, 'b': [1, 2, 3], 'c': 'text'}",
    "alias_a = [1, 2, 3]\nalias_b = alias_a",
    "log = open(LOG_PATH, 'w')\nlog.write('important line\\n')\nlog.flush()",
    "squares = (i * i for i in range(10))\nfirst = next(squares), next(squares)",
    "class Point:\n    pass\np = Point()\np.v = 2",
    "alias_a.append(4)",
]
FINGERPRINTS = (
    "{k: (__import__('hashlib').sha256(v.tobytes()).hexdigest() if hasattr(v, 'tobytes') else repr(v)) "
    "for k, v in [('noise', noise), ('small', small), ('alias_a', alias_a), ('p.v', p.v), ('first', first)]}"
)
WAIT_FOR_CHECKPOINT = (
    "__import__('elastic_proxy.inner_agent', fromlist=['_']).get_agent(get_ipython()).checkpointer.wait(60)"
)


def reply_to(kc, msg_id: str, timeout: float = 60) -> dict:
    """The shell reply to `msg_id`, skipping others (wait_for_ready may leave kernel_info replies)."""
    while True:
        reply = kc.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def expression(kc, expr: str) -> str:
    """Evaluate `expr` in the kernel without using up a cell (a user expression)."""
    value = reply_to(kc, kc.execute("", silent=True, user_expressions={"v": expr}))["content"]["user_expressions"]["v"]
    assert value["status"] == "ok", value
    return value["data"]["text/plain"]


def build_state(kc, log_path: Path) -> str:
    run(kc, f"LOG_PATH = {str(log_path)!r}")
    for code in SETUP:
        reply, _ = run(kc, code)
        assert reply["status"] == "ok", (code, reply)
    expression(kc, WAIT_FOR_CHECKPOINT)
    return expression(kc, FINGERPRINTS)


def check_state(kc, before: str, log_path: Path) -> list[dict]:
    """The next cell runs on the restored state: fingerprints, aliasing, file, generator."""
    reply, first = run(kc, "print(alias_b is alias_a, p.v, small['c'])")
    assert reply["status"] == "ok", reply
    assert stdout_of(first) == "True 2 text\n"
    assert expression(kc, FINGERPRINTS) == before
    assert log_path.read_text() == "important line\n"
    report = report_text(first)
    reply, outputs = run(kc, "try:\n    print(next(squares))\nexcept Exception as e:\n    print(type(e).__name__)")
    resumed = stdout_of(outputs) == "4\n"
    assert resumed or ("squares" in report), (stdout_of(outputs), report)
    reply, outputs = run(kc, "noise[3, 0] = -5.0\nprint(window[0, 0])")
    assert stdout_of(outputs) == "-5.0\n", "the view no longer shares its base's memory"
    return first


def report_text(outputs: list[dict]) -> str:
    return "".join(m["content"]["data"].get("text/plain", "") for m in outputs if m["msg_type"] == "display_data")


@pytest.fixture
def session_env(tmp_path):
    return {"JPY_SESSION_NAME": f"recovery-{uuid.uuid4().hex[:8]}.ipynb"}


def test_idle_kill(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        before = build_state(kc, tmp_path / "log.txt")
        os.kill(child_pid(kc), signal.SIGKILL)
        outputs = check_state(kc, before, tmp_path / "log.txt")
        assert "restored" in report_text(outputs)


def test_mid_cell_kill_and_the_report(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        before = build_state(kc, tmp_path / "log.txt")
        threading.Timer(1.0, os.kill, (child_pid(kc), signal.SIGKILL)).start()
        reply, _ = run(kc, "noise[0, 0] = -1.0  # never completes\nimport time; time.sleep(30)")
        assert reply["status"] == "error" and "SIGKILL" in reply["evalue"]
        assert "restoring the state after cell" in reply["evalue"]
        check_state(kc, before, tmp_path / "log.txt")


def test_segfault(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        before = build_state(kc, tmp_path / "log.txt")
        reply, _ = run(kc, "import ctypes; ctypes.string_at(0)")
        assert "segmentation fault" in reply["evalue"]
        check_state(kc, before, tmp_path / "log.txt")


def test_oom_under_memory_limit(tmp_path, session_env):
    with elastic_kernel("elastic-recovery-oom", env=session_env) as (_, kc):
        before = build_state(kc, tmp_path / "log.txt")
        reply, _ = run(kc, "big = np.ones(3 * 1024**3 // 8)")
        assert reply["status"] == "error" and "out of memory" in reply["evalue"], reply
        check_state(kc, before, tmp_path / "log.txt")
        assert "NameError" in expression(kc, "repr(globals().get('big', NameError))")


def test_restart(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (km, kc):
        before = build_state(kc, tmp_path / "log.txt")
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        outputs = check_state(kc, before, tmp_path / "log.txt")
        assert "restored" in report_text(outputs)


def test_reopen_after_shutdown(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        before = build_state(kc, tmp_path / "log.txt")
    # the notebook is closed (kernel shut down) and opened again: a new kernel, same notebook path
    with elastic_kernel("elastic-recovery", env=session_env) as (_km, kc):
        check_state(kc, before, tmp_path / "log.txt")


def test_a_different_notebook_starts_empty(tmp_path, session_env):
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        build_state(kc, tmp_path / "log.txt")
    with elastic_kernel("elastic-recovery", env={"JPY_SESSION_NAME": "another.ipynb"}) as (_, kc):
        assert expression(kc, "'noise' in globals()") == "False"


def test_papermill_notebook_whose_cell_5_is_oom_killed_runs_to_the_end(tmp_path, session_env):
    import papermill

    nb = nbformat.v4.new_notebook()
    cells = ["import numpy as np", "a = np.random.rand(1000)", "b = a * 2", "total = float(a.sum())",
             "boom = np.ones(3 * 1024**3 // 8)", "print(total == float(a.sum()), b is not None)"]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    os.environ.update(session_env)
    try:
        # allow_errors goes through to nbclient: every cell runs; papermill still reports the error at the end
        with pytest.raises(papermill.PapermillExecutionError, match="out of memory"):
            papermill.execute_notebook(str(src), str(out), kernel_name="elastic-recovery-oom", allow_errors=True,
                                       execution_timeout=None, progress_bar=False, log_output=False)
    finally:
        for key in session_env:
            os.environ.pop(key, None)
    result = nbformat.read(out, as_version=4)
    by_source = {c.source: c for c in result.cells}
    oom = [o for o in by_source[cells[4]].outputs if o["output_type"] == "error"]
    assert [o["ename"] for o in oom] == ["KernelDied"] and "out of memory" in oom[0]["evalue"]
    last = [o["text"] for o in by_source[cells[5]].outputs if o["output_type"] == "stream" and o["name"] == "stdout"]
    assert last == ["True True\n"], by_source[cells[5]].outputs


def test_nbclient_allow_errors_sees_the_restored_state_after_an_oom(tmp_path, session_env):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    cells = ["import numpy as np", "a = np.random.rand(1000)", "b = a * 2", "total = float(a.sum())",
             "boom = np.ones(3 * 1024**3 // 8)", "print(total == float(a.sum()), (b == a * 2).all())"]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    os.environ.update(session_env)
    try:
        NotebookClient(nb, kernel_name="elastic-recovery-oom", timeout=None, allow_errors=True).execute()
    finally:
        for key in session_env:
            os.environ.pop(key, None)
    assert [o["ename"] for o in nb.cells[4].outputs if o["output_type"] == "error"] == ["KernelDied"]
    streams = [o["text"] for o in nb.cells[5].outputs if o["output_type"] == "stream" and o["name"] == "stdout"]
    assert streams == ["True True\n"], nb.cells[5].outputs


@pytest.fixture(scope="module", autouse=True)
def recovery_kernelspecs(jupyter_env):
    prefix = jupyter_env / "prefix"
    install_variant(prefix, "elastic-recovery", "--storm-limit", "100")
    install_variant(prefix, "elastic-recovery-oom", "--storm-limit", "100", "--memory-limit", "1G")


def test_the_client_never_waits_on_a_restoring_kernel_for_kernel_info(tmp_path, session_env):
    """kernel_info and heartbeat are answered by the supervisor while a child restores."""
    km = KernelManager(kernel_name="elastic-recovery")
    km.start_kernel(env={**os.environ, **session_env})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        build_state(kc, tmp_path / "log.txt")
        os.kill(child_pid(kc), signal.SIGKILL)
        assert kc.hb_channel.is_beating()
        kc.kernel_info()
        assert kc.get_shell_msg(timeout=5)["msg_type"] == "kernel_info_reply"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


#: A checkpoint writer of the session that is still running (a dead kernel's, in real life): it holds the
#: session's writer lock until it is terminated.
HOLD_WRITER_LOCK = """
import os, time
from elastic_proxy.inner_agent.agent import session_name
from elastic_proxy.inner_agent.writer_lock import hold_while_writing
from elastic_proxy.store import open_store
hold_while_writing(open_store(session_name(), os.environ.get("ELASTIC_PROXY_STORE") or None))
print("holding", flush=True)
time.sleep(300)
"""


def test_a_reopened_kernel_is_ready_while_its_restore_waits_for_a_writer(tmp_path, session_env):
    """Reopening a notebook while the last kernel's checkpoint writer is still writing: the new kernel
    answers kernel_info at once (jupyter_client and nbclient give up on a kernel after 60 s, and the
    restore may wait minutes), and its first cell waits for the restore, which waits for the writer. An
    interrupt meanwhile stops the waiting cell, unrun."""
    env = {**os.environ, **session_env}
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        run(kc, "x = 41")
        expression(kc, WAIT_FOR_CHECKPOINT)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_WRITER_LOCK], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "holding\n"
        km = KernelManager(kernel_name="elastic-recovery")
        km.start_kernel(env=env)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            assert writer.poll() is None, "the writer ended before the kernel was ready: nothing was shown"

            # An interrupt meanwhile stops the waiting cell (it would otherwise run, and wait in input()).
            interrupted = kc.execute("input()")
            km.interrupt_kernel()
            assert reply_to(kc, interrupted, timeout=10)["content"]["ename"] == "KeyboardInterrupt"
            msg_id = kc.execute("print(x + 1)")
            with pytest.raises(queue.Empty):  # the restore is still waiting for the writer
                reply_to(kc, msg_id, timeout=2)
            writer.terminate()
            reply = reply_to(kc, msg_id, timeout=60)
            assert reply["content"]["status"] == "ok", reply
            printed = []
            while not printed:
                msg = kc.get_iopub_msg(timeout=10)
                if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                    printed.append(msg["content"]["text"])
            assert printed == ["42\n"]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    finally:
        writer.kill()
        writer.wait()


def test_a_kill_right_after_a_big_cell_loses_no_completed_cell(tmp_path, session_env):
    """Killed right after the cells that made an unseeded 400 MB array and opened a file for writing,
    while the background writer is still busy with the array: the writers outlive the kernel, the
    restore waits for them, and every completed cell comes back exactly (none is re-run: a re-run
    would give other random values and truncate the file)."""
    log_path = tmp_path / "out.log"
    with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
        run(kc, "import numpy as np, hashlib")
        run(kc, "a = np.random.rand(50_000_000)\ndigest = hashlib.sha256(a.tobytes()).hexdigest()")
        run(kc, "x = 41")
        run(kc, f"log = open({str(log_path)!r}, 'w')\nlog.write('kept\\n')\nlog.flush()")
        before = expression(kc, "digest")
        os.kill(child_pid(kc), signal.SIGKILL)
        reply, outputs = run(kc, "print(hashlib.sha256(a.tobytes()).hexdigest(), x + 1, log.name)")
        assert reply["status"] == "ok", (reply, outputs)
        assert stdout_of(outputs) == f"{before.strip(chr(39))} 42 {log_path}\n"
        notice = "".join(m["content"]["text"] for m in outputs
                         if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
        assert "not re-run" not in notice, notice
        assert log_path.read_text() == "kept\n"


BIG_CELL = "a = np.random.rand(50_000_000)\ndigest = hashlib.sha256(a.tobytes()).hexdigest()\nsmall = [1, 2]"


@pytest.mark.parametrize("ending", ["restart", "reopen"])
def test_a_graceful_end_right_after_a_big_cell_loses_no_cell(tmp_path, session_env, ending):
    """restart_kernel() or closing the notebook while the 400 MB cell is still being written, and
    with one more cell not written at all: the kernel's exit starts a writer for what is left, the
    writers are not in the kernel's process group (its shutdown signals do not reach them), and the
    next kernel's restore waits for them. Every completed cell comes back exactly."""
    with elastic_kernel("elastic-recovery", env=session_env) as (km, kc):
        run(kc, "import numpy as np, hashlib")
        run(kc, BIG_CELL)
        run(kc, "small.append(3)")
        before = expression(kc, "digest")
        if ending == "restart":
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=120)
            reply, outputs = run(kc, "print(hashlib.sha256(a.tobytes()).hexdigest(), small)")
    if ending == "reopen":
        with elastic_kernel("elastic-recovery", env=session_env) as (_, kc):
            reply, outputs = run(kc, "print(hashlib.sha256(a.tobytes()).hexdigest(), small)")
    assert reply["status"] == "ok", (reply, outputs)
    assert stdout_of(outputs) == f"{before.strip(chr(39))} [1, 2, 3]\n", report_text(outputs)


def test_an_interrupt_does_not_stop_a_checkpoint_being_written(tmp_path, session_env):
    """The interrupt's SIGINT goes to the kernel's process group; the writer has its own, so the
    write in flight completes (no second attempt) and a SIGKILL afterwards restores it."""
    checkpointer = "__import__('elastic_proxy.inner_agent', fromlist=['_']).get_agent(get_ipython()).checkpointer"
    with elastic_kernel("elastic-recovery", env=session_env) as (km, kc):
        run(kc, "import numpy as np, hashlib")
        run(kc, BIG_CELL)
        before = expression(kc, "digest")
        threading.Timer(0.3, km.interrupt_kernel).start()
        cell = f"ck = {checkpointer}\nfailures, in_flight = ck.failures, ck.busy\nimport time; time.sleep(20)"
        reply, _ = run(kc, cell)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        assert expression(kc, "in_flight") == "True", "the write ended before the interrupt: nothing tested"
        expression(kc, WAIT_FOR_CHECKPOINT)
        assert expression(kc, "(ck.failures - failures, ck.last_error)") == "(0, None)"
        os.kill(child_pid(kc), signal.SIGKILL)
        reply, outputs = run(kc, "print(hashlib.sha256(a.tobytes()).hexdigest())")
        assert stdout_of(outputs) == f"{before.strip(chr(39))}\n", report_text(outputs)


def test_without_a_notebook_path_a_death_still_restores(tmp_path):
    """nbclient, papermill and plain jupyter_client set no JPY_SESSION_NAME: the session is the kernel's."""
    env = {k: v for k, v in os.environ.items() if k not in ("JPY_SESSION_NAME", "ELASTIC_PROXY_SESSION")}
    with elastic_kernel("elastic-recovery", env=env, replace_env=True) as (_, kc):
        run(kc, "kept = [1, 2, 3]")
        expression(kc, WAIT_FOR_CHECKPOINT)
        os.kill(child_pid(kc), signal.SIGKILL)
        reply, outputs = run(kc, "print(kept)")
        assert stdout_of(outputs) == "[1, 2, 3]\n", (reply, outputs)

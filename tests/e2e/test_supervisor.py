"""The supervisor with real processes: one test at least per line of protocol.md's
"Routing", "kernel_info", "Interrupt, shutdown, restart" and "Child death" sections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from queue import Empty

import nbformat
import psutil
import pytest
import zmq
from jupyter_client import BlockingKernelClient, KernelManager
from nbclient import NotebookClient

from tests.e2e.harness import (
    KERNEL_NAME,
    child_pid,
    control_request,
    drain,
    elastic_kernel,
    install_variant,
    run,
    second_client,
    stdout_of,
    supervisor_process,
    wait_for,
    wait_new_child,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def kernel(jupyter_env):
    """One kernel for the tests that kill its child many times: a storm limit they never reach."""
    name = install_variant(jupyter_env / "prefix", "elastic-many-deaths", "--storm-limit", "1000")
    with elastic_kernel(name) as (km, kc):
        yield km, kc


def kill_child_during(kc: BlockingKernelClient, code: str, signum: int = signal.SIGKILL, delay: float = 0.5):
    """Run `code`, kill the child with `signum` after `delay` s, return (reply, outputs, seconds)."""
    pid = child_pid(kc)
    timer = threading.Timer(delay, os.kill, (pid, signum))
    timer.start()
    start = time.monotonic()
    reply, outputs = run(kc, code)
    return reply, outputs, time.monotonic() - start, pid


# --- Routing ---------------------------------------------------------------------------
def test_input_round_trip(kernel):
    _, kc = kernel
    prompts = []

    def answer(msg):
        prompts.append(msg["content"]["prompt"])
        kc.input(f"echo-{len(prompts)}")

    reply, outputs = run(kc, "a = input('first? '); b = input('second? '); print(a, b)",
                         allow_stdin=True, stdin_hook=answer)
    assert reply["status"] == "ok"
    assert prompts == ["first? ", "second? "]
    assert stdout_of(outputs) == "echo-1 echo-2\n"


def test_two_clients_each_get_their_own_replies_and_share_iopub(kernel):
    km, kc = kernel
    other = second_client(km)
    try:
        other.wait_for_ready(timeout=30)
        msg_id = other.execute("shared_value = 7")
        reply = other.get_shell_msg(timeout=30)
        while reply["msg_type"] == "kernel_info_reply":  # left over from wait_for_ready
            reply = other.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
        # the first client sees the other client's execution on IOPub
        assert wait_for(lambda: any(
            m["parent_header"].get("msg_id") == msg_id for m in drain(kc.iopub_channel)), timeout=10)
        assert not [m for m in drain(kc.shell_channel) if m["msg_type"] == "execute_reply"]
        reply, outputs = run(kc, "print(shared_value)")
        assert stdout_of(outputs) == "7\n"
    finally:
        other.stop_channels()


def test_replies_from_the_child_are_signed_with_the_clients_key(kernel):
    _, kc = kernel
    assert kc.session.key  # jupyter_client generated a key; every reply above verified with it
    reply, _ = run(kc, "1 + 1")
    assert reply["status"] == "ok"


def test_replayed_signed_message_is_refused():
    """A captured, validly signed execute_request must not run twice (the child forgets, we do not)."""
    with elastic_kernel() as (km, kc):
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.connect(f"tcp://127.0.0.1:{km.shell_port}")
        msg = kc.session.msg("execute_request", {"code": "counter = globals().get('counter', 0) + 1",
                                                 "silent": False, "store_history": True,
                                                 "user_expressions": {}, "allow_stdin": False})
        frames = kc.session.serialize(msg)
        for _ in range(2):
            sock.send_multipart(frames)
        assert sock.poll(30_000)
        sock.recv_multipart()
        assert not sock.poll(1500), "the replayed message got a reply"
        sock.close(0)
        ctx.term()
        _, outputs = run(kc, "print(counter)")
        assert stdout_of(outputs) == "1\n"


def test_badly_signed_message_is_dropped_and_the_kernel_keeps_working(kernel):
    km, kc = kernel
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{km.shell_port}")
    for frames in ([b"garbage"], [b"<IDS|MSG>", b"bad", b"{}", b"{}", b"{}", b"{}"]):
        sock.send_multipart(frames)
    assert not sock.poll(1000)
    sock.close(0)
    ctx.term()
    reply, _ = run(kc, "1")
    assert reply["status"] == "ok"


def test_oversized_iopub_subscription_is_refused(kernel):
    km, kc = kernel
    proc = supervisor_process(km)
    before = proc.memory_info().rss
    # A hostile peer, in a process of its own: libzmq's own subscription trie recurses once per
    # topic byte, so the sender would crash on close; it exits without closing.
    hostile = (
        "import os, time, zmq\n"
        "sub = zmq.Context().socket(zmq.XSUB)\n"
        f"sub.connect('tcp://127.0.0.1:{km.iopub_port}')\n"
        "for _ in range(5): sub.send(b'\\x01' + b'x' * (12 * 2**20))\n"
        "time.sleep(1.0)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", hostile], check=True, timeout=60)
    assert proc.memory_info().rss - before < 100 * 2**20
    reply, _ = run(kc, "1")
    assert reply["status"] == "ok"


def test_iopub_welcome_is_sent_by_the_proxy(kernel):
    km, _ = kernel
    fresh = second_client(km)
    try:
        msg = fresh.iopub_channel.get_msg(timeout=10)
        assert msg["msg_type"] == "iopub_welcome"
        assert msg["parent_header"] == {}
    finally:
        fresh.stop_channels()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_client_transports_and_an_empty_key(transport):
    from jupyter_client.session import Session

    with elastic_kernel(transport=transport, session=Session(key=b"")) as (_, kc):
        reply, outputs = run(kc, "print('ok')")
        assert reply["status"] == "ok" and stdout_of(outputs) == "ok\n"


# --- kernel_info, heartbeat, usage ------------------------------------------------------
def test_kernel_info_strips_subshells_and_debugger(kernel):
    _, kc = kernel
    kc.kernel_info()
    reply = kc.get_shell_msg(timeout=30)["content"]
    assert "kernel subshells" not in reply.get("supported_features", [])
    assert reply["debugger"] is False
    assert reply["language_info"]["name"] == "python"


def test_kernel_info_and_heartbeat_answer_while_the_child_is_down(kernel):
    km, kc = kernel
    pid = child_pid(kc)
    os.kill(pid, signal.SIGKILL)
    # the new child takes about a second to start; kernel_info must not wait for it
    start = time.monotonic()
    content = control_request(kc, "kernel_info_request", {}, timeout=10)
    assert time.monotonic() - start < 0.5
    assert content["language_info"]["name"] == "python"
    assert kc.hb_channel.is_beating()
    wait_new_child(kc, pid)
    assert km.is_alive()


def test_usage_request_names_the_child(kernel):
    km, kc = kernel
    run(kc, "1")  # a child that is up, not one still importing after the previous test's kill
    content = control_request(kc, "usage_request", {})
    child = psutil.Process(content["pid"])
    assert child.pid != km.provisioner.process.pid
    assert child.pid in [p.pid for p in supervisor_process(km).children()]
    assert content["kernel_memory"] > 10 * 2**20


# --- Interrupt, shutdown, restart -------------------------------------------------------
def test_interrupt_reaches_the_child(kernel):
    km, kc = kernel
    assert km.kernel_spec.interrupt_mode == "message"
    run(kc, "1")  # a child that is up, not one still being respawned by an earlier test
    threading.Timer(1.0, km.interrupt_kernel).start()
    start = time.monotonic()
    reply, _ = run(kc, "import time; time.sleep(30)")
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - start < 10
    assert run(kc, "1")[0]["status"] == "ok"


def test_shutdown_leaves_no_orphans():
    with elastic_kernel() as (km, kc):
        supervisor = supervisor_process(km)
        child = psutil.Process(child_pid(kc))
        km.shutdown_kernel(now=False)
        assert wait_for(lambda: not supervisor.is_running() or supervisor.status() == psutil.STATUS_ZOMBIE)
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)


def test_restart_starts_a_new_supervisor_on_the_same_ports():
    with elastic_kernel() as (km, kc):
        old_supervisor = supervisor_process(km)
        old_child = psutil.Process(child_pid(kc))
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        assert wait_for(lambda: not old_child.is_running() or old_child.status() == psutil.STATUS_ZOMBIE)
        assert not old_supervisor.is_running() or old_supervisor.status() == psutil.STATUS_ZOMBIE
        _reply, outputs = run(kc, "print('after restart')")
        assert stdout_of(outputs) == "after restart\n"


def test_sigkill_of_the_supervisor_takes_the_child_with_it():
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        child = psutil.Process(child_pid(kc))
        os.kill(km.provisioner.process.pid, signal.SIGKILL)
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, timeout=5)
    finally:
        kc.stop_channels()
        km.cleanup_resources()


# --- Child death ------------------------------------------------------------------------
def test_child_killed_mid_cell_gets_one_error_reply_and_idle(kernel):
    _, kc = kernel
    run(kc, "print('warm')")
    code = "import time; print('started', flush=True); time.sleep(30)"
    reply, outputs, seconds, pid = kill_child_during(kc, code)
    assert reply["status"] == "error" and reply["ename"] == "KernelDied"
    assert "SIGKILL" in reply["evalue"]
    errors = [m for m in outputs if m["msg_type"] == "error"]
    assert len(errors) == 1 and "SIGKILL" in errors[0]["content"]["evalue"]
    assert "started\n" in stdout_of(outputs)  # output printed before the death is kept, in order
    assert outputs.index(errors[0]) > [m["msg_type"] for m in outputs].index("stream")
    assert seconds < 10
    count = reply["execution_count"]
    reply, outputs = run(kc, "print('next cell')")
    assert reply["status"] == "ok" and stdout_of(outputs) == "next cell\n"
    assert reply["execution_count"] == count + 1
    assert child_pid(kc) != pid


def test_child_killed_while_idle_is_replaced_silently(kernel):
    _, kc = kernel
    pid = child_pid(kc)
    before = run(kc, "1")[0]["execution_count"]
    os.kill(pid, signal.SIGKILL)
    reply, outputs = run(kc, "print('fine')")
    assert reply["status"] == "ok" and stdout_of(outputs) == "fine\n"
    assert reply["execution_count"] == before + 1


def test_segfault_is_named(kernel):
    _, kc = kernel
    reply, _outputs = run(kc, "import ctypes; ctypes.string_at(0)")
    assert reply["status"] == "error" and "segmentation fault" in reply["evalue"]
    assert run(kc, "1")[0]["status"] == "ok"


def test_no_restarting_status_is_ever_published(kernel):
    _, kc = kernel
    drain(kc.iopub_channel)
    kill_child_during(kc, "import time; time.sleep(30)")
    run(kc, "1")
    states = [m["content"].get("execution_state") for m in drain(kc.iopub_channel)
              if m["msg_type"] == "status"]
    assert "restarting" not in states and "starting" not in states


@pytest.mark.parametrize("stop_on_error, second", [(True, "aborted"), (False, "ok")])
def test_requests_queued_behind_a_killed_cell(kernel, stop_on_error, second):
    """With stop_on_error (the default) they are aborted, as ipykernel does; without it they run on the new child."""
    _, kc = kernel
    run(kc, "1")  # the child is up, so the first cell really starts before the kill
    pid = child_pid(kc)
    first_id = kc.execute("import time; time.sleep(30)", stop_on_error=stop_on_error)
    second_id = kc.execute("print('after')")
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    replies = {}
    while len(replies) < 2:
        msg = kc.get_shell_msg(timeout=60)
        replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[first_id]["status"] == "error"
    assert replies[second_id]["status"] == second


def test_comms_open_before_a_death_are_closed(kernel):
    _, kc = kernel
    code = "from comm import create_comm; c = create_comm(target_name='probe'); print(c.comm_id)"
    _, outputs = run(kc, code)
    comm_id = stdout_of(outputs).splitlines()[0]
    drain(kc.iopub_channel)
    pid = child_pid(kc)
    os.kill(pid, signal.SIGKILL)
    # comm_close comes once the new child is up; read IOPub directly (execute_interactive would
    # discard messages that are not its own)
    deadline = time.monotonic() + 30
    closes = []
    while comm_id not in closes and time.monotonic() < deadline:
        try:
            msg = kc.iopub_channel.get_msg(timeout=1)
        except Empty:
            continue
        if msg["msg_type"] == "comm_close":
            closes.append(msg["content"]["comm_id"])
    assert comm_id in closes


def test_oom_under_memory_limit_is_named(kernel_prefix):
    name = install_variant(kernel_prefix, "elastic-oom-test", "--memory-limit", "300M")
    with elastic_kernel(name) as (_, kc):
        reply, _outputs = run(kc, "import numpy as np; big = np.ones(2 * 1024**3 // 8)")
        assert reply["status"] == "error", reply
        assert "out of memory" in reply["evalue"] and "300M" in reply["evalue"]
        _, outputs = run(kc, "print('alive')")
        assert stdout_of(outputs) == "alive\n", outputs


def test_restart_storm_stops_and_says_why(kernel_prefix):
    name = install_variant(kernel_prefix, "elastic-storm-test", "--storm-limit", "3", "--storm-window", "120")
    with elastic_kernel(name) as (km, kc):
        km.autorestart = False
        evalues = []
        for _ in range(3):
            reply, _ = run(kc, "import os; os.kill(os.getpid(), 9)")
            evalues.append(reply.get("evalue", ""))
        assert "stops restarting" in evalues[-1], evalues
        assert "stops restarting" not in evalues[0]
        assert wait_for(lambda: not km.is_alive(), timeout=15)
        assert km.provisioner.process.returncode not in (0, None)


def test_nbclient_with_no_timeout_finishes_a_notebook_that_kills_its_kernel(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
        nbformat.v4.new_code_cell("print('after the crash')"),
    ]
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=None, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    done = threading.Event()
    result = {}

    def execute():
        result["nb"] = client.execute()
        done.set()

    threading.Thread(target=execute, daemon=True).start()
    assert done.wait(120), "nbclient hung on a notebook whose kernel was killed"
    cells = result["nb"].cells
    errors = [o for o in cells[1].outputs if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["KernelDied"], cells[1].outputs
    streams = [o for o in cells[2].outputs if o["output_type"] == "stream"]
    assert [o["text"] for o in streams] == ["after the crash\n"], cells[2].outputs


def _server_launching_a_kernel(then: str) -> tuple[subprocess.Popen, psutil.Process]:
    """A process standing in for the Jupyter server: it starts the kernel, then runs `then`."""
    script = (
        "import os, time\n"
        "from jupyter_client import KernelManager\n"
        f"km = KernelManager(kernel_name={KERNEL_NAME!r})\n"
        "km.start_kernel()\n"
        "print(km.provisioner.process.pid, flush=True)\n"
        f"{then}\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    return server, psutil.Process(int(server.stdout.readline()))


def _gone(proc: psutil.Process) -> bool:
    return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


def test_supervisor_exits_when_the_process_that_started_it_dies():
    """A crashed Jupyter server must not leave the kernel (and its child) running forever."""
    parent, supervisor = _server_launching_a_kernel("time.sleep(120)")
    assert wait_for(lambda: supervisor.children(), timeout=30)
    child = supervisor.children()[0]
    parent.kill()
    parent.wait()
    assert wait_for(lambda: _gone(supervisor), timeout=15)
    assert wait_for(lambda: _gone(child), timeout=5)


def test_supervisor_exits_when_its_server_died_while_it_started():
    """The server dies as soon as it has launched the kernel: before the supervisor's parent watch
    first looks (it used to take init for its parent then, and watch it for ever)."""
    parent, supervisor = _server_launching_a_kernel("os._exit(0)")
    parent.wait()
    try:
        assert wait_for(lambda: _gone(supervisor), timeout=30)
    finally:
        if not _gone(supervisor):
            for proc in [*supervisor.children(recursive=True), supervisor]:
                proc.kill()


def test_a_warm_spare_takes_over_after_a_death(kernel):
    """The next child was already running before the death: a death costs the restore, not a start."""
    km, kc = kernel
    run(kc, "1")
    supervisor = supervisor_process(km)
    pid = child_pid(kc)
    assert wait_for(lambda: len(supervisor.children()) == 2, timeout=30), "no warm spare was started"
    spare = next(p.pid for p in supervisor.children() if p.pid != pid)
    os.kill(pid, signal.SIGKILL)
    assert run(kc, "print('on the spare')")[1][-1]["content"]["text"] == "on the spare\n"
    assert child_pid(kc) == spare
    assert wait_for(lambda: len(supervisor.children()) == 2, timeout=30), "no new spare after the takeover"


def test_a_runtime_dir_too_long_for_unix_sockets_still_works(tmp_path):
    deep = tmp_path / ("a-rather-long-runtime-directory-name-" * 3) / "runtime"
    with elastic_kernel(env={"JUPYTER_RUNTIME_DIR": str(deep)}) as (_, kc):
        reply, outputs = run(kc, "print('fine')")
        assert reply["status"] == "ok" and stdout_of(outputs) == "fine\n"


def test_extra_arguments_reach_the_child(tmp_path):
    """jupyter_client appends extra_arguments to the kernel's command line: they are the child's."""
    (tmp_path / "profile").mkdir()
    km = KernelManager(kernel_name=KERNEL_NAME)
    km.start_kernel(extra_arguments=["--profile-dir", str(tmp_path / "profile")])
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        _, outputs = run(kc, "print(get_ipython().profile_dir.location)")
        assert stdout_of(outputs) == f"{tmp_path / 'profile'}\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

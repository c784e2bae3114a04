"""Round trip through two real ipykernels: record and checkpoint every trap, restore in a fresh one.

Kernel 1 loads the agent with %load_ext and runs cells full of traps; kernel 2 starts fresh with
ELASTIC_PROXY_RESTORE=auto and the agent as a startup extension (as the supervisor starts it).
Every variable must come back with the recorded fingerprint, or be named in the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.timeout(120)

TRAP_CELLS = [
    "import numpy as np\nimport threading\na = np.arange(1_000_000, dtype=np.float64)",
    "r = np.random.rand(1000)",
    "b = a\nholder = [a, 'tag']",
    "class Point:\n    def __init__(self):\n        self.v = 1\np = Point()",
    "p.v = 2",
    "d = {'x': {'y': [np.zeros(50), np.ones(3)]}}",
    "d['x']['y'][0][7] = 9.5",
    "g = (i * i for i in range(10))\nfirst = next(g)",
    "lock = threading.Lock()",
    "fh = open(DATA_PATH, 'w')\nfh.write('hello\\n')\nfh.flush()",
    "square = lambda x: x * x",
    "%%time\ntimed = sum(range(1000))",
    "lst = [1, 2]",
    "lst.append(3)\n1 / 0",
    "exec('ex = 41 + 1')\nglobals()['gl'] = 'made by globals()'",
]
NAMES = ["np", "threading", "a", "r", "b", "holder", "Point", "p", "d", "g", "first", "lock", "fh",
         "square", "timed", "lst", "ex", "gl", "DATA_PATH"]

FINGERPRINTS = (
    "print(__import__('json').dumps({k: [FP_.inspect(v).hex(), FP_.inspect(v).opaque]"
    " for k, v in get_ipython().user_ns.items() if k in NAMES_}))"
)


class Kernel:
    """A real ipykernel through jupyter_client, with a helper that runs a cell and keeps its messages."""

    def __init__(self, env: dict[str, str], extra: list[str] | None = None) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env, extra_arguments=extra or [])
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, allow_error: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        messages: list[dict[str, Any]] = []
        reply = self.kc.execute_interactive(code, output_hook=messages.append, timeout=60)
        if not allow_error:
            assert reply["content"]["status"] == "ok", (code, reply["content"], messages)
        return reply, messages

    def stdout(self, code: str) -> str:
        _, messages = self.run(code)
        return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def fingerprints(kernel: Kernel) -> dict[str, list[Any]]:
    code = (f"NAMES_ = {NAMES!r}\nimport elastic_proxy.inner_agent.fingerprint as FP_\n{FINGERPRINTS}\n"
            "del NAMES_, FP_")
    return json.loads(kernel.stdout(code))


def test_agent_round_trip_through_real_kernels(tmp_path: Path) -> None:
    data_path = tmp_path / "data.txt"
    env = dict(os.environ)
    env.update(
        ELASTIC_PROXY_STORE=str(tmp_path / "store"),
        ELASTIC_PROXY_SECRET_FILE=str(tmp_path / "secret"),
        ELASTIC_PROXY_SESSION="e2e/agent-roundtrip",
        ELASTIC_PROXY_RESTORE="off",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    k1 = Kernel(env)
    try:
        k1.run("%load_ext elastic_proxy.inner_agent")
        k1.run(f"DATA_PATH = {str(data_path)!r}")
        for cell in TRAP_CELLS:
            reply, _ = k1.run(cell, allow_error=True)
            expected = "error" if "1 / 0" in cell else "ok"
            assert reply["content"]["status"] == expected, (cell, reply["content"])
        last_count = reply["content"]["execution_count"]
        before = fingerprints(k1)
        r_bytes = k1.stdout("print(r.tobytes().hex())").strip()
        final_count = k1.run("%elastic sync")[0]["content"]["execution_count"]
        status = k1.stdout("cp_ = __import__('elastic_proxy.inner_agent', fromlist=['x'])"
                           ".get_agent(get_ipython()).checkpointer\nprint(cp_.status(), cp_.forks)\ndel cp_")
        assert "'last_error': None" in status and "'in_flight': None" in status, status
        assert int(status.split()[-1]) > 0, "checkpoints must have gone through forked writers"
    finally:
        k1.shutdown()
    assert set(before) == set(NAMES)
    assert data_path.read_text() == "hello\n"

    env["ELASTIC_PROXY_RESTORE"] = "auto"
    started = time.perf_counter()
    k2 = Kernel(env, ["--IPKernelApp.extensions=['elastic_proxy.inner_agent']"])
    try:
        reply, messages = k2.run("1 + 1")
        shown = [m for m in messages if m["msg_type"] == "display_data"]
        assert shown and shown[0]["content"]["data"]["text/plain"].startswith("elastic: restored"), messages
        assert "text/html" in shown[0]["content"]["data"]
        # The checkpoint carries the cell log up to when it was written: at least the last state change,
        # at most the status cell after the sync (the kernel's exit writes what is not committed).
        assert last_count < reply["content"]["execution_count"] <= final_count + 2, "execution count must continue"
        report = json.loads(k2.stdout(
            "print(__import__('json').dumps(__import__('elastic_proxy.inner_agent', fromlist=['x'])"
            ".get_agent(get_ipython()).last_report.to_json()))"
        ))
        after = fingerprints(k2)
        r_after = k2.stdout("print(r.tobytes().hex())").strip()
        checks = k2.stdout(
            "print(b is a, holder[0] is a, p.v, type(p) is Point, d['x']['y'][0][7], lst, timed, ex, gl,"
            " square(7), fh.mode, In[2].startswith('DATA_PATH'))"
        )
        k2.run("fh.write('more\\n'); fh.flush()")
    finally:
        k2.shutdown()
    restore_seconds = time.perf_counter() - started

    named = set(report["lost"]) | set(report["mismatched"]) | set(report["unverified"])
    for name in NAMES:
        if name in report["lost"]:
            assert report["lost"][name], f"{name} lost without a reason"
            continue
        assert name in after, f"{name} neither restored nor reported lost"
        assert after[name][0] == before[name][0] or name in named, (
            f"{name}: fingerprint differs and the report does not say so"
        )
    assert "g" in report["lost"] and "generator" in report["lost"]["g"]
    assert r_after == r_bytes, "the unseeded random array must come back bit-identical"
    assert "r" in report["restored"], "a nondeterministic value must be loaded, never recomputed"
    assert checks.split() == ["True", "True", "2", "True", "9.5", "[1,", "2,", "3]", "499500", "42",
                              "made", "by", "globals()", "49", "a", "True"], checks
    assert data_path.read_text() == "hello\nmore\n", "the file must never be truncated by a restore"
    assert restore_seconds < 30


def stderr_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages
                   if m["msg_type"] == "stream" and m["content"]["name"] == "stderr")


def test_a_comm_holding_the_kernel_is_recompute_only_and_never_breaks_the_hooks(tmp_path: Path) -> None:
    """A Comm reaches the whole kernel: its size estimate once recursed without end in the
    post_run_cell hook. It must only be marked recompute-only, and restores must still work."""
    env = dict(os.environ)
    env.update(
        ELASTIC_PROXY_STORE=str(tmp_path / "store"),
        ELASTIC_PROXY_SECRET_FILE=str(tmp_path / "secret"),
        ELASTIC_PROXY_SESSION="e2e/agent-comm",
        ELASTIC_PROXY_RESTORE="auto",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    extension = ["--IPKernelApp.extensions=['elastic_proxy.inner_agent']"]
    k1 = Kernel(env, extension)
    try:
        _, messages = k1.run("x = [1, 2]")
        shown = [m for m in messages if m["msg_type"] in ("stream", "display_data", "execute_result")]
        assert not shown, "a new session shows nothing in its first cell"
        for cell in ("from comm import create_comm; c = create_comm(target_name='probe'); print(c.comm_id)",
                     "c.comm_id", "y = len(x)", "%elastic sync"):
            _, messages = k1.run(cell)
            assert stderr_of(messages) == "", (cell, messages)
        status = k1.stdout("print(__import__('elastic_proxy.inner_agent', fromlist=['x'])"
                           ".get_agent(get_ipython()).checkpointer.status())")
        assert "'last_error': None" in status and "'c': " in status.split("'unserializable'")[1], status
    finally:
        k1.shutdown()
    k2 = Kernel(env, extension)
    try:
        _, messages = k2.run("print(x, y)")
        assert stderr_of(messages) == "", messages
        shown = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data"]
        assert shown and shown[0].startswith("elastic: restored") and "x, y" in shown[0], shown
        assert "[1, 2] 2" in "".join(m["content"].get("text", "") for m in messages), messages
    finally:
        k2.shutdown()


NOTEBOOK_CLASS = '''class Account:
    """A notebook class: methods that share names, a property, class-level state."""
    rate = 0.5
    history = []

    def __init__(self, owner):
        self.owner = owner
        self.total = 0

    def add(self, amount):
        self.total += amount
        Account.history.append(amount)

    def interest(self):
        return self.total * self.rate

    @property
    def label(self):
        return f"{self.owner}: {self.total}"

acct = Account("ada")
acct.add(10)'''


def test_a_notebook_class_and_its_instance_fingerprint_the_same_after_a_restore(tmp_path: Path) -> None:
    """cloudpickle rebuilds a class __dict__ in another order and unshares the name tuples its
    methods' code objects share: neither may read as "differs" after a restore."""
    env = dict(os.environ)
    env.update(
        ELASTIC_PROXY_STORE=str(tmp_path / "store"),
        ELASTIC_PROXY_SECRET_FILE=str(tmp_path / "secret"),
        ELASTIC_PROXY_SESSION="e2e/agent-class",
        ELASTIC_PROXY_RESTORE="auto",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    extension = ["--IPKernelApp.extensions=['elastic_proxy.inner_agent']"]
    probe = ("import json as j_, elastic_proxy.inner_agent.fingerprint as f_\n"
             "print(j_.dumps({n: f_.inspect(get_ipython().user_ns[n]).hex() for n in ('Account', 'acct')}))\n"
             "del j_, f_")
    k1 = Kernel(env, extension)
    try:
        k1.run(NOTEBOOK_CLASS)
        k1.run("%elastic sync")
        before = json.loads(k1.stdout(probe))
    finally:
        k1.shutdown()
    k2 = Kernel(env, extension)
    try:
        k2.run("pass")
        report = json.loads(k2.stdout(
            "print(__import__('json').dumps(__import__('elastic_proxy.inner_agent', fromlist=['x'])"
            ".get_agent(get_ipython()).last_report.to_json()))"
        ))
        after = json.loads(k2.stdout(probe))
        checks = k2.stdout("print(type(acct) is Account, acct.label, acct.interest(), Account.history)")
    finally:
        k2.shutdown()
    assert {"Account", "acct"} <= set(report["restored"]) | set(report["recomputed"]), report
    assert not set(report["mismatched"]) & {"Account", "acct"}, report["mismatched"]
    assert after == before
    assert checks == "True ada: 10 5.0 [10]\n", checks


def test_a_kernel_whose_restore_was_skipped_lists_the_largest_and_restores_without_them(tmp_path: Path) -> None:
    """What the supervisor starts after a child died of memory while restoring:
    ELASTIC_PROXY_RESTORE=off and ELASTIC_PROXY_RESTORE_SKIPPED=<reason>."""
    env = dict(os.environ)
    env.update(
        ELASTIC_PROXY_STORE=str(tmp_path / "store"),
        ELASTIC_PROXY_SECRET_FILE=str(tmp_path / "secret"),
        ELASTIC_PROXY_SESSION="e2e/agent-skip",
        ELASTIC_PROXY_RESTORE="auto",
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
    )
    extension = ["--IPKernelApp.extensions=['elastic_proxy.inner_agent']"]
    k1 = Kernel(env, extension)
    try:
        for cell in ("import numpy as np", "big = np.random.rand(40_000_000)", "small = {'a': [1, 2, 3]}",
                     "medium = np.arange(1_000_000)", "%elastic sync"):
            k1.run(cell)
    finally:
        k1.shutdown()
    env.update(ELASTIC_PROXY_RESTORE="off",
               ELASTIC_PROXY_RESTORE_SKIPPED="restoring the last checkpoint ran out of memory")
    k2 = Kernel(env, extension)
    try:
        _, messages = k2.run("print('big' in globals())")
        shown = [m["content"]["data"] for m in messages if m["msg_type"] == "display_data"]
        assert len(shown) == 1 and "text/html" in shown[0], messages
        text = shown[0]["text/plain"]
        assert text.startswith("elastic: the restore was skipped: restoring the last checkpoint ran out of memory")
        rows = [line.split() for line in text.split("largest variables:")[1].splitlines()[1:4]]
        assert rows[0][:3] == ["big", "numpy.ndarray", "305.2"] and rows[1][:2] == ["medium", "numpy.ndarray"], text
        assert "%elastic restore --skip big" in text and "%elastic reset" in text, text
        assert k2.stdout("print('big' in globals())") == "False\n"
        _, messages = k2.run("%elastic restore --skip big")
        report = next(m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data")
        assert "LOST big: skipped at your request" in report, report
        checks = k2.stdout("print('big' in globals(), small, int(medium.sum()), np.__name__)")
        assert checks == "False {'a': [1, 2, 3]} 499999500000 numpy\n", checks
        loaded = k2.stdout("print(__import__('elastic_proxy.inner_agent', fromlist=['x'])"
                           ".get_agent(get_ipython()).last_report.bytes_loaded)")
        assert int(loaded) < 20 << 20, "the skipped array must not be read at all"
    finally:
        k2.shutdown()

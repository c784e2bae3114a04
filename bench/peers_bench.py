"""elastic-proxy against its peers, ElasticKernel (PyPI elastic-kernel) and plain ipykernel, in one run.

Each tool is a kernelspec in a private Jupyter dir, started by jupyter_client's KernelManager with
JPY_SESSION_NAME set to a notebook file, as Jupyter Server starts kernels: `python3-elastic` (installed
with `elastic-proxy install`), `elastic_kernel` (ElasticKernel's own kernel.json, run by the Python of a
separate venv, --peers-python: `make bench-peers` builds it) and `python3-plain` (ipykernel of this
interpreter). Measured, side by side:
1. trivial-cell round trip (`1 + 1`, `x = 1`, `n += 1`; p50/p99, interleaved) with four namespaces, the
   workloads of agent_overhead.py;
2. bytes each tool writes when one element of a 200 MB array changes (the files created or rewritten
   under the notebook's checkpoint dir / store), and when it writes them;
3. time and outcome after a SIGKILL of the process running the user's code (then, for the kernels
   without a supervisor, the restart jupyter_client's restarter does), after restart_kernel(), and
   after reopen (shutdown + a new kernel for the same notebook);
4. a 3 GB state restarted gracefully (ElasticKernel saves it inside the shutdown, under jupyter_client's
   shutdown timer).
The outcome is judged by a fingerprint of the state computed inside the kernel (names, and a digest of
each value's bytes or repr) before and after: "restored equal", "restored a stale state" (equal to the
state at the tool's last checkpoint, not the newest), "lost everything", or what differs.

    .venv/bin/python bench/peers_bench.py [--peers-python .venv-peers/bin/python] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from _common import CLEAR, SCENARIOS, START, TRIVIAL, ms, percentile
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

TIMEOUT = 900.0
MB = 1_000_000


@dataclass(frozen=True)
class Tool:
    label: str
    spec: str
    #: whether a supervisor survives the death of the process that runs the user's code
    supervised: bool = False


PROXY = Tool("elastic-proxy", "python3-elastic", supervised=True)
PEER = Tool("ElasticKernel", "elastic_kernel")
PLAIN = Tool("ipykernel", "python3-plain")
TOOLS = [PROXY, PEER, PLAIN]

#: Run inside the kernel (by a user expression, so it is no cell and leaves no name behind): a digest
#: per user variable, of an array's dtype, shape and bytes, of anything else's repr.
FINGERPRINT_SOURCE = """
import hashlib, json, types
def fingerprint(ns):
    skip = {"In", "Out", "exit", "quit", "get_ipython", "open"}
    out = {}
    for name in sorted(ns):
        value = ns[name]
        if name.startswith("_") or name in skip or isinstance(value, (types.ModuleType, type)):
            continue
        digest = hashlib.blake2b(digest_size=16)
        if type(value).__module__ == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
            import numpy
            digest.update(repr((value.dtype.str, value.shape)).encode())
            digest.update(memoryview(numpy.ascontiguousarray(value)).cast("B"))
        else:
            digest.update(repr(value).encode())
        out[name] = digest.hexdigest()
    return json.dumps(out)
"""
FINGERPRINT = f"(lambda g: exec({FINGERPRINT_SOURCE!r}, g) or g['fingerprint'](get_ipython().user_ns))({{}})"

#: The notebook of the recovery cases: a 200 MB array from an unseeded generator (re-running its cell
#: gives other values, so only a saved copy brings it back) by a cell that takes {cost} s (a costly
#: result; ElasticKernel then saves it rather than re-running the cell), small values, then the
#: changes made after the tool's last checkpoint: an element of the array, a counter, an edit inside a
#: list, a new name.
BEFORE_SAVE = [
    "import numpy as np\nimport time",
    "arr = np.random.default_rng().random({length})\ntime.sleep({cost})",
    "params = {{'lr': 0.01, 'layers': [64, 32]}}\ncounter = 1\nitems = list(range(1000))",
]
AFTER_SAVE = ["arr[12345] = -1.0", "counter += 1", "items.append(-1)", "newer = 'made after the checkpoint'"]


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout), so a stuck step can be named."""
    print(f"peers_bench {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class CellFailed(RuntimeError):
    pass


class Notebook:
    """One notebook open in one tool: a kernel started the way Jupyter Server starts it."""

    def __init__(self, tool: Tool, path: Path) -> None:
        self.tool = tool
        self.path = path
        path.touch()
        self.km: KernelManager
        self.kc: BlockingKernelClient
        #: what the kernel showed besides the fingerprint in the last fingerprint cell (a restore report)
        self.said: list[str] = []
        self.open()

    def open(self) -> None:
        # Each notebook's elastic-proxy store sits next to it, so the bytes written are its own.
        env = {**os.environ, "JPY_SESSION_NAME": str(self.path),
               "ELASTIC_PROXY_STORE": str(self.path.parent / "elastic-proxy-store")}
        self.km = KernelManager(kernel_name=self.tool.spec)
        self.km.start_kernel(env=env, cwd=str(self.path.parent))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def close(self, now: bool = False) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel:
            self.km.shutdown_kernel(now=now)

    def execute(self, code: str, **kw: Any) -> dict[str, Any]:
        return self.kc.execute(code, reply=True, timeout=TIMEOUT, **kw)["content"]

    def run(self, code: str) -> float:
        """Seconds from the request to its reply (what the user waits)."""
        started = time.perf_counter()
        reply = self.execute(code)
        elapsed = time.perf_counter() - started
        if reply["status"] != "ok":
            raise CellFailed(f"{self.tool.label}: {code[:60]!r}: {reply.get('ename')}: {reply.get('evalue')}")
        return elapsed

    def fingerprint(self, retry_until: float = 0.0) -> dict[str, str]:
        """The state's fingerprint, from a cell as a user would run (a silent request would not trigger
        a restore that waits for the first cell). A request that reached a dying child (elastic-proxy
        answers it with KernelDied) is sent again until `retry_until` (a time.monotonic())."""
        while True:
            outputs: list[dict[str, Any]] = []
            reply = self.kc.execute_interactive(f"print({FINGERPRINT})", timeout=TIMEOUT,
                                                output_hook=outputs.append)["content"]
            text = "".join(m["content"]["text"] for m in outputs
                           if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
            if reply["status"] == "ok":
                self.said = [line for m in outputs for line in said(m)]
                return json.loads(text.strip().splitlines()[-1])
            if reply.get("ename") != "KernelDied" or time.monotonic() > retry_until:
                raise CellFailed(f"{self.tool.label}: fingerprint failed: {reply.get('ename')}: {reply.get('evalue')}")

    def control(self, msg_type: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
        msg = self.kc.session.msg(msg_type, content or {})
        self.kc.control_channel.send(msg)
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self.kc.get_control_msg(timeout=max(deadline - time.monotonic(), 0.1))
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply["content"]

    def user_pid(self) -> int:
        """The process running the user's code, from usage_request (as jupyter-resource-usage asks):
        elastic-proxy's child, or the kernel process itself."""
        deadline = time.monotonic() + 60
        while True:
            content = self.control("usage_request")
            if "pid" in content:
                return int(content["pid"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.tool.label}: usage_reply names no pid: {content}")
            time.sleep(0.1)

    def sync(self) -> None:
        """Let a checkpoint in flight finish (elastic-proxy's is in the background), so it skews nothing."""
        if self.tool is PROXY:
            self.run("%elastic sync")

    def checkpoint(self) -> str:
        """What each tool offers to save the state now: ElasticKernel's control request (its REST API's
        and its shutdown's code path); elastic-proxy saves after every cell; ipykernel saves nothing."""
        if self.tool is PEER:
            reply = self.control("elastic_checkpoint_request")
            if not reply.get("ok"):
                raise RuntimeError(f"ElasticKernel checkpoint failed: {reply}")
            return f"elastic_checkpoint_request: {reply.get('elapsed_seconds', 0):.2f} s"
        self.sync()
        return "after every cell (`%elastic sync` waits for it)" if self.tool is PROXY else "nothing to save"

    def sigkill(self) -> tuple[int, float]:
        """SIGKILL the user's process; returns (pid, perf_counter at the kill)."""
        pid = self.user_pid()
        started = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        return pid, started

    def recover_from_kill(self) -> None:
        """What follows a SIGKILL: elastic-proxy's supervisor respawns the child by itself; for a kernel
        without a supervisor, jupyter_client's restarter sees the process gone and calls
        restart_kernel(now=True) (it polls every 3 s; here the death is seen at once)."""
        if self.tool.supervised:
            return
        while self.km.is_alive():
            time.sleep(0.02)
        self.km.restart_kernel(now=True)
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def restart(self) -> None:
        self.km.restart_kernel(now=False)
        self.kc.wait_for_ready(timeout=TIMEOUT)

    def reopen(self) -> None:
        self.close()
        self.open()

    def checkpoint_files(self) -> dict[str, tuple[int, int, int]]:
        """Every file a tool keeps for this notebook (ElasticKernel: .elastic_kernel/ next to it;
        elastic-proxy: its store), path -> (inode, size, mtime), logs left out."""
        found = {}
        for root in (self.path.parent / ".elastic_kernel", self.path.parent / "elastic-proxy-store"):
            for file in root.rglob("*") if root.exists() else []:
                if file.is_file() and file.suffix != ".log":
                    stat = file.stat()
                    found[str(file)] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return found

    def peer_log(self) -> str:
        """ElasticKernel's own account (it shows nothing in the notebook): the errors it logged and what
        its last checkpoint saved and left to re-running."""
        text = "\n".join(file.read_text(errors="replace")
                         for file in (self.path.parent / ".elastic_kernel").rglob("*.log"))
        notes = []
        plans = re.findall(r"マイグレーション対象: (\[.*?\])\uff0c再計算対象: (\[.*?\])", text)
        if plans:
            notes.append(f"ElasticKernel's last checkpoint saved {plans[-1][0]}, left {plans[-1][1]} to re-run")
        errors = re.findall(r"(Error (?:loading|saving) checkpoint: .*)", text)
        if errors:
            notes.append(f"its log: {errors[-1][:160]}")
        return "; ".join(notes)


def said(msg: dict[str, Any]) -> list[str]:
    """The first line of what a kernel shows besides stdout: display data (elastic-proxy's restore
    report), stderr, errors."""
    content = msg["content"]
    if msg["msg_type"] == "display_data":
        text = content["data"].get("text/plain", "")
    elif msg["msg_type"] == "stream" and content["name"] == "stderr":
        text = content["text"]
    elif msg["msg_type"] == "error":
        text = f"{content['ename']}: {content['evalue']}"
    else:
        return []
    return [text.strip().splitlines()[0][:240]] if text.strip() else []


def bytes_written(before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]) -> int:
    """Bytes of the files created or rewritten between two listings (a rewritten file counts whole)."""
    return sum(meta[1] for path, meta in after.items() if before.get(path) != meta)


def verdict(after: dict[str, str], newest: dict[str, str], stale: dict[str, str] | None) -> str:
    if after == newest:
        return "restored equal"
    if not after:
        return "lost everything"
    if stale is not None and after == stale and stale != newest:
        return "restored a stale state (the last checkpoint's: newer changes gone, older values back)"
    missing = sorted(set(newest) - set(after))
    changed = sorted(name for name in set(newest) & set(after) if newest[name] != after[name])
    extra = sorted(set(after) - set(newest))
    parts = [f"{label} {', '.join(names)}" for label, names in
             (("missing", missing), ("different", changed), ("unexpected", extra)) if names]
    if stale is not None:
        old = [name for name in changed if stale.get(name) == after[name]]
        if old:
            parts.append(f"(stale: {', '.join(old)} as at the last checkpoint)")
    return "restored a different state: " + "; ".join(parts)


@contextmanager
def private_jupyter(peers_python: str) -> Iterator[Path]:
    """Private Jupyter dirs with the three kernelspecs; nothing outside a temp dir is touched."""
    with tempfile.TemporaryDirectory(prefix="elastic-peers-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        prefix = root / "prefix"
        env = {
            "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
            "JUPYTER_DATA_DIR": str(root / "data"),
            "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
            "JUPYTER_CONFIG_DIR": str(root / "config"),
            "IPYTHONDIR": str(root / "ipython"),
            "ELASTIC_PROXY_SECRET_FILE": str(root / "secret"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            subprocess.run([sys.executable, "-m", "elastic_proxy", "install", "--prefix", str(prefix)],
                           check=True, capture_output=True)
            kernels = prefix / "share" / "jupyter" / "kernels"
            specs = {PEER.spec: [peers_python, "-m", "elastic_kernel.kernel", "-f", "{connection_file}"],
                     PLAIN.spec: [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]}
            for name, argv in specs.items():
                (kernels / name).mkdir(parents=True, exist_ok=True)
                (kernels / name / "kernel.json").write_text(
                    json.dumps({"argv": argv, "display_name": name, "language": "python"}))
            yield root
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class Workspace:
    """Fresh notebook paths (each in its own directory, as their checkpoints sit next to them)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def notebook(self, tool: Tool, case: str) -> Path:
        self.count += 1
        folder = self.root / "notebooks" / f"{self.count:02d}-{tool.spec}-{case}"
        folder.mkdir(parents=True)
        return folder / "notebook.ipynb"


# --- 1. trivial-cell overhead ---------------------------------------------------------------------
def overhead(space: Workspace, runs: int) -> list[list[str]]:
    log("overhead: starting the three kernels")
    notebooks = [Notebook(tool, space.notebook(tool, "overhead")) for tool in TOOLS]
    rows = []
    try:
        for nb in notebooks:
            nb.run(START)
        for label, setup in SCENARIOS:
            for nb in notebooks:
                nb.run(setup)
                nb.sync()
            for cell_label, code in TRIVIAL:
                log(f"overhead: {label} {cell_label}")
                times: dict[Tool, list[float]] = {nb.tool: [] for nb in notebooks}
                for _ in range(3):
                    for nb in notebooks:
                        nb.run(code)
                for nb in notebooks:
                    nb.sync()
                for _ in range(runs):
                    for nb in notebooks:
                        times[nb.tool].append(nb.run(code))
                for nb in notebooks:
                    nb.sync()
                base = statistics.median(times[PLAIN])
                row = [label, cell_label]
                for tool in TOOLS:
                    p50 = statistics.median(times[tool])
                    row.append(f"{ms(p50)} / {ms(percentile(times[tool], 0.99))}")
                    if tool is not PLAIN:
                        row.append(f"{p50 / base:.2f}x ({(p50 - base) * 1000:+.1f} ms)")
                rows.append(row)
            for nb in notebooks:
                nb.run(CLEAR)
                nb.sync()
    finally:
        for nb in notebooks:
            nb.close(now=True)
    return rows


# --- 2. bytes written for a one-element change ----------------------------------------------------
def one_element(space: Workspace, cost: float) -> list[list[str]]:
    """For each tool the array comes from a costly cell (so ElasticKernel saves it); ElasticKernel
    once more with a cheap cell, where its optimizer chooses to re-run the cell instead."""
    rows = []
    for tool, seconds in [(tool, cost) for tool in TOOLS] + [(PEER, 0.0)]:
        label = tool.label if seconds else f"{tool.label}, cheap cell (no sleep)"
        log(f"bytes written: {label}")
        nb = Notebook(tool, space.notebook(tool, "bytes"))
        try:
            nb.run("import numpy as np\nimport time")
            nb.run(f"big = np.random.default_rng().random(25_000_000)\ntime.sleep({seconds})")
            first = nb.checkpoint()
            time.sleep(1)
            before = nb.checkpoint_files()
            nb.run("big[12345] = -1.0")
            time.sleep(1)
            after_cell = nb.checkpoint_files()
            started = time.perf_counter()
            how = nb.checkpoint()
            saved_in = time.perf_counter() - started
            after = nb.checkpoint_files()
            total = bytes_written(before, after)
            rows.append([label, f"{bytes_written({}, before) / MB:.2f} MB ({first})",
                         f"{bytes_written(before, after_cell) / MB:.2f} MB",
                         f"{total / MB:.2f} MB in {saved_in:.2f} s ({how})", f"{total / 200e6:.4f}",
                         nb.peer_log() if tool is PEER else ""])
        except Exception as error:
            rows.append([label, f"FAILED: {error}", "", "", "", ""])
        finally:
            nb.close(now=True)
    return rows


# --- 3. recovery after SIGKILL, restart_kernel(), reopen ------------------------------------------
def kill_event(nb: Notebook) -> float:
    """From the SIGKILL to the reply of the first cell (the fingerprint's), in seconds."""
    _, started = nb.sigkill()
    nb.recover_from_kill()
    nb.fingerprint(retry_until=time.monotonic() + TIMEOUT)
    return time.perf_counter() - started


def restart_event(nb: Notebook) -> float:
    started = time.perf_counter()
    nb.restart()
    nb.fingerprint(retry_until=time.monotonic() + TIMEOUT)
    return time.perf_counter() - started


def reopen_event(nb: Notebook) -> float:
    started = time.perf_counter()
    nb.reopen()
    nb.fingerprint(retry_until=time.monotonic() + TIMEOUT)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Case:
    label: str
    event: Callable[[Notebook], float]
    #: whether the tool's checkpoint is taken between BEFORE_SAVE and AFTER_SAVE
    saved_first: bool = True
    #: whether the array's cell is costly (ElasticKernel saves the array rather than re-running it)
    costly: bool = True


CASES = [
    Case("SIGKILL", kill_event),
    Case("restart_kernel()", restart_event),
    Case("reopen", reopen_event),
    Case("SIGKILL, no checkpoint requested before", kill_event, saved_first=False),
    Case("restart_kernel(), the array from a cheap cell", restart_event, costly=False),
]


@dataclass
class Outcome:
    tool: Tool
    case: str
    seconds: float | None
    verdict: str
    notes: str = ""


def recovery(space: Workspace, length: int, cost: float) -> list[Outcome]:
    outcomes = []
    for case in CASES:
        for tool in TOOLS:
            log(f"recovery: {tool.label} {case.label}")
            nb = Notebook(tool, space.notebook(tool, "recovery"))
            try:
                for code in BEFORE_SAVE:
                    nb.run(code.format(length=length, cost=cost if case.costly else 0))
                stale = None
                if case.saved_first:
                    nb.checkpoint()
                    stale = nb.fingerprint()
                for code in AFTER_SAVE:
                    nb.run(code)
                newest = nb.fingerprint()
                seconds = case.event(nb)
                after = nb.fingerprint()
                notes = nb.peer_log() if tool is PEER else "; ".join(nb.said)
                outcomes.append(Outcome(tool, case.label, seconds, verdict(after, newest, stale), notes))
            except Exception as error:
                outcomes.append(Outcome(tool, case.label, None, f"FAILED: {error}"))
            finally:
                nb.close(now=True)
    return outcomes


# --- 4. a 3 GB state, restarted gracefully --------------------------------------------------------
def graceful_huge(space: Workspace, huge_mb: int, cost: float) -> list[Outcome]:
    """Small values saved by an earlier reopen (ElasticKernel's checkpoint at shutdown), then a
    `huge_mb` unseeded array from a cell that takes `cost` s, then restart_kernel(): jupyter_client
    asks for a shutdown, SIGTERMs after shutdown_wait_time / 2 and SIGKILLs after shutdown_wait_time.
    elastic-proxy runs twice: shut down at once like the others, and once its background checkpoint is
    committed (`%elastic sync` before each shutdown)."""
    outcomes = []
    for tool, settled in [(tool, False) for tool in TOOLS] + [(PROXY, True)]:
        label = f"restart_kernel() with {huge_mb} MB" + (", after `%elastic sync`" if settled else "")
        log(f"graceful restart with {huge_mb} MB: {tool.label}{' (settled)' if settled else ''}")
        nb = Notebook(tool, space.notebook(tool, "huge"))
        try:
            for code in BEFORE_SAVE:
                nb.run(code.format(length=1000, cost=0))
            small = nb.fingerprint()
            if settled:
                nb.sync()
            nb.reopen()
            reopened = nb.fingerprint()
            nb.run("import numpy as np\nimport time")
            nb.run(f"huge = np.random.default_rng().random({huge_mb * MB // 8})\ntime.sleep({cost})")
            before = nb.checkpoint_files()
            if settled:
                nb.sync()
            newest = nb.fingerprint()
            started = time.perf_counter()
            nb.restart()
            after = nb.fingerprint(retry_until=time.monotonic() + TIMEOUT)
            seconds = time.perf_counter() - started
            after_said = nb.said
            files = nb.checkpoint_files()
            notes = [f"the small state after the earlier reopen: {verdict(reopened, small, None)}"]
            if tool is PEER:
                sizes = [f"{meta[1] / MB:.0f} MB" for path, meta in files.items() if path.endswith("checkpoint.pickle")]
                notes.append(f"checkpoint.pickle after the restart: {', '.join(sizes) or 'none'}")
                notes.append(nb.peer_log())
            elif tool is PROXY:
                notes.append(f"store written since the cell: {bytes_written(before, files) / MB:.0f} MB")
                notes += after_said
            outcomes.append(Outcome(tool, label, seconds, verdict(after, newest, small), "; ".join(notes)))
        except Exception as error:
            outcomes.append(Outcome(tool, label, None, f"FAILED: {error}"))
        finally:
            nb.close(now=True)
    return outcomes


# --- report ---------------------------------------------------------------------------------------
def versions(space: Workspace) -> list[list[str]]:
    """What each kernel really ran, asked from inside it."""
    code = ("import importlib.metadata as m, platform, sys\n"
            "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return '-'\n"
            "print(platform.python_version(), sys.executable, *(v(n) for n in "
            "('elastic-proxy', 'elastic-kernel', 'ipykernel', 'numpy', 'dill', 'cloudpickle')))")
    rows = []
    for tool in TOOLS:
        nb = Notebook(tool, space.notebook(tool, "versions"))
        try:
            outputs: list[dict[str, Any]] = []
            nb.kc.execute_interactive(code, timeout=TIMEOUT, output_hook=outputs.append)
            text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
            fields = text.split()
            rows.append([tool.label, tool.spec, *(fields or ["(no output)"] * 8)])
        finally:
            nb.close(now=True)
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def outcome_table(outcomes: list[Outcome]) -> str:
    rows = [[o.case, o.tool.label, "-" if o.seconds is None else f"{o.seconds:.2f}", o.verdict, o.notes]
            for o in outcomes]
    return table(["event", "tool", "seconds to the first reply", "state afterwards (by fingerprint)", "notes"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers-python", default=os.environ.get("PEERS_PYTHON", ".venv-peers/bin/python"),
                        help="the Python of the venv where elastic-kernel is installed")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per trivial cell and namespace")
    parser.add_argument("--state-mb", type=int, default=200, help="the array of the recovery cases")
    parser.add_argument("--cost", type=float, default=5.0, help="seconds the 200 MB array's cell takes")
    parser.add_argument("--huge-mb", type=int, default=3000, help="the array of the graceful-restart case")
    parser.add_argument("--huge-cost", type=float, default=60.0, help="seconds the huge array's cell takes")
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "bytes", "recovery", "huge"])
    args = parser.parse_args()
    peers_python = os.path.abspath(args.peers_python)
    check = subprocess.run([peers_python, "-c", "import elastic_kernel.kernel"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"ElasticKernel does not import with {peers_python}: {check.stderr.strip()[-500:]}\n"
                 "(`make bench-peers` installs it in .venv-peers)")
    with private_jupyter(peers_python) as root:
        space = Workspace(root)
        print("Each tool runs as a kernelspec started by jupyter_client's KernelManager with JPY_SESSION_NAME "
              "set to a notebook file of its own, in a private Jupyter dir. Versions, asked inside each kernel:\n")
        print(table(["tool", "kernelspec", "python", "sys.executable", "elastic-proxy", "elastic-kernel",
                     "ipykernel", "numpy", "dill", "cloudpickle"], versions(space)))
        if "overhead" not in args.skip:
            rows = overhead(space, args.runs)
            print(f"\n### Trivial-cell overhead\n\nRound trip execute_request -> execute_reply, p50 / p99 in ms, "
                  f"{args.runs} interleaved runs per cell after 3 warm-ups; ratio = p50 against plain ipykernel "
                  "in the same run. The checkpoint elastic-proxy takes in the background after a change is "
                  "waited for between series (`%elastic sync`), not inside them.\n")
            print(table(["namespace", "cell", "elastic-proxy", "elastic-proxy / ipykernel", "ElasticKernel",
                         "ElasticKernel / ipykernel", "ipykernel"], rows))
        if "bytes" not in args.skip:
            rows = one_element(space, args.cost)
            print(f"\n### Bytes written when one element of a 200 MB array changes\n\n`big = "
                  f"np.random.default_rng().random(25_000_000)` in a cell that takes {args.cost:g} s "
                  "(`time.sleep`), the tool's save, `big[12345] = -1.0`, the tool's save again. Bytes = the "
                  "files created or rewritten under the notebook's checkpoint dir (ElasticKernel: "
                  "`.elastic_kernel/<inode hash>/` next to the notebook; elastic-proxy: its store), a "
                  "rewritten file counted whole, logs left out. ElasticKernel's save is its "
                  "elastic_checkpoint_request (the code path of its save at shutdown).\n")
            print(table(["tool", "first save", "written by the cell itself", "written by the next save",
                         "next save / 200 MB", "notes"], rows))
        if "recovery" not in args.skip:
            length = args.state_mb * MB // 8
            outcomes = recovery(space, length, args.cost)
            cells = "; ".join(f"`{c.format(length=length, cost=args.cost)}`".replace("\n", "; ")
                              for c in BEFORE_SAVE)
            print(f"\n### State after SIGKILL, restart_kernel(), reopen\n\nThe notebook: {cells}; the tool's "
                  "checkpoint (ElasticKernel: its elastic_checkpoint_request, what it saves at a graceful "
                  "shutdown; elastic-proxy: after every cell; ipykernel: none); then "
                  f"{', '.join(f'`{c}`' for c in AFTER_SAVE)}; then the event. SIGKILL hits the process that "
                  "runs the user's code (elastic-proxy's child, from usage_request; the kernel process of the "
                  "others, which jupyter_client's restarter then restarts: here at once, in Jupyter after up "
                  "to 3 s of polling). Seconds: from the kill / the restart call / the shutdown to the reply "
                  "of the first cell, which hashes the whole state. The state is judged by that fingerprint "
                  "(computed in the kernel: each name, each value's bytes or repr) against the one taken "
                  "before the event and the one taken at the checkpoint (\"stale\").\n")
            print(outcome_table(outcomes))
        if "huge" not in args.skip:
            outcomes = graceful_huge(space, args.huge_mb, args.huge_cost)
            print(f"\n### A {args.huge_mb} MB state, restarted gracefully\n\nSmall values, a reopen "
                  "(ElasticKernel saves them at its shutdown), then `huge = np.random.default_rng().random(...)` "
                  f"({args.huge_mb} MB) in a cell that takes {args.huge_cost:g} s (so ElasticKernel saves it "
                  "rather than re-running it), then `restart_kernel()` at once: jupyter_client asks for a "
                  "shutdown, sends SIGTERM after 2.5 s and SIGKILL after 5 s (shutdown_wait_time). \"stale\" "
                  "= the small values only.\n")
            print(outcome_table(outcomes))


if __name__ == "__main__":
    main()

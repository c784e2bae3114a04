"""Time to a usable kernel after a crash or a restart, with a large state, against a plain reload.

A notebook state of --size-mb of random float64 arrays (nothing compresses or dedups) plus
--small small variables of assorted types is built in a `python3-elastic` kernel (installed with
`elastic-proxy install` in a private Jupyter dir and store, started by jupyter_client's
KernelManager) and checkpointed; the bench waits until the checkpoint is committed (the store's
newest valid manifest lists every variable and `%elastic status` shows nothing pending). Measured:
- SIGKILL of the child -> the first ok reply of a cell that uses the whole state (sums every array),
  after check cells that changed nothing (the proxy re-runs them first), and again right after a
  checkpointed change (nothing to re-run); each kill once the supervisor's children are idle (its
  warm spare, if it keeps one, is up);
- `KernelManager.restart_kernel()` of the elastic kernel -> the same cell's first ok reply;
- baseline: a fresh plain ipykernel (kernelspec `python3` of this interpreter) started by
  KernelManager, then `pickle.load` of the same state from one file in the same directory as the
  store, then the same cell; and `restart_kernel()` of that plain kernel + the same load + cell.
Both read warm page cache (the store's blobs and the pickle file were just written).
Target: SIGKILL -> usable <= 1.5x the baseline. Every restore is checked: an xxh3_128 digest of
every array's bytes and every small variable's repr must equal the digest of the original state.

Usage: python bench/restore_bench.py [--size-mb 1024] [--repeat 5] [--arrays 4] [--small 100]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from elastic_proxy.testing_env import child_pid, private_jupyter

ELASTIC_SPEC = "python3-elastic"
BASELINE_SPEC = "python3"
SESSION = "bench/restore_bench.ipynb"
TIMEOUT = 300.0  # per step: a hang is recorded as that case's failure, not the whole run's
TARGET_RATIO = 1.5
MiB = 1 << 20

#: Builds the state from an unseeded generator: a cell that cannot be re-run to the same values,
#: so a restore must load the arrays from the checkpoint rather than recompute them.
MAKE_STATE = """\
import numpy as np
_rng = np.random.default_rng()
for _i in range({arrays}):
    globals()[f"big_{{_i}}"] = _rng.random({per_array})
for _i in range({small}):
    _kind = _i % 5
    if _kind == 0:
        globals()[f"small_{{_i}}"] = _i * 1000003
    elif _kind == 1:
        globals()[f"small_{{_i}}"] = f"value {{_i}} " * 3
    elif _kind == 2:
        globals()[f"small_{{_i}}"] = [_i, float(_i) / 7, str(_i), (_i, _i + 1)]
    elif _kind == 3:
        globals()[f"small_{{_i}}"] = {{"id": _i, "tags": ["a", "b", str(_i)], "score": _i / 3}}
    else:
        globals()[f"small_{{_i}}"] = _rng.integers(0, 1000, size=64)
del _rng, _i, _kind
"""

#: Digest of the whole state; leaves no new variable behind (nothing more to checkpoint).
DIGEST = """\
import xxhash as _xx
_h = _xx.xxh3_128()
for _k in sorted(k for k in globals() if k.startswith(("big_", "small_"))):
    _v = globals()[_k]
    _h.update(_k.encode())
    if isinstance(_v, np.ndarray):
        _h.update(repr((_v.dtype.str, _v.shape)).encode())
        _h.update(np.ascontiguousarray(_v).data)
    else:
        _h.update(repr(_v).encode())
print(_h.hexdigest())
del _xx, _h, _k, _v
"""


def use_cell(arrays: int, small: int) -> str:
    """The first cell after a crash: it names every variable, so no lazy load can skip any."""
    bigs = ", ".join(f"big_{i}" for i in range(arrays))
    smalls = ", ".join(f"small_{i}" for i in range(small))
    return f"print(repr(float(sum(float(x.sum()) for x in ({bigs},)))), len([{smalls}]))"


def load_cell(path: str) -> str:
    return ("import pickle, numpy as np\n"
            f"with open({path!r}, 'rb') as _f:\n"
            "    globals().update(pickle.load(_f))\n"
            "del _f")


def log(message: str) -> None:
    """Progress on stderr (the tables go to stdout), so a stuck step can be named."""
    print(f"restore_bench {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


class CellFailed(RuntimeError):
    def __init__(self, code: str, content: dict[str, Any]) -> None:
        super().__init__(f"{content.get('ename')}: {content.get('evalue')} (cell {code[:60]!r})")
        self.content = content


@dataclass
class Cell:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]]

    def stream(self, name: str) -> str:
        return "".join(m["content"]["text"] for m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == name)

    @property
    def stdout(self) -> str:
        return self.stream("stdout")

    def texts(self) -> list[str]:
        """text/plain of display outputs (the agent's restore report is one)."""
        return [m["content"]["data"]["text/plain"] for m in self.outputs
                if m["msg_type"] in ("display_data", "execute_result") and "text/plain" in m["content"]["data"]]


def run(kc: BlockingKernelClient, code: str, check: bool = True) -> Cell:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=outputs.append)["content"]
    if check and reply["status"] != "ok":
        raise CellFailed(code, reply)
    return Cell(reply, outputs)


def restore_seconds(cell: Cell) -> float | None:
    """The load time the agent reports in its restore report ("... in 1.02 s")."""
    for text in cell.texts():
        found = re.search(r"^elastic: restored .* in ([0-9.]+) s$", text, re.MULTILINE)
        if found:
            return float(found.group(1))
    return None


def run_until_ok(kc: BlockingKernelClient, code: str, deadline: float) -> Cell:
    """Send `code` until it succeeds; only the proxy's KernelDied answer (a request that reached
    the child as it died) is retried, any other error is a failed restore."""
    while True:
        cell = run(kc, code, check=False)
        if cell.reply["status"] == "ok":
            return cell
        if cell.reply.get("ename") != "KernelDied" or time.monotonic() > deadline:
            raise CellFailed(code, cell.reply)


@contextmanager
def isolated_jupyter() -> Iterator[str]:
    """Private Jupyter dirs, store and secret, with the elastic kernelspec installed; yields the root."""
    with tempfile.TemporaryDirectory(prefix="elastic-restore-bench-", dir=os.environ.get("TMPDIR")) as root, \
            private_jupyter(Path(root)):
        yield root


@contextmanager
def started(spec: str, extra_arguments: list[str] | None = None
            ) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=spec)
    km.start_kernel(env={**os.environ, "JPY_SESSION_NAME": SESSION}, extra_arguments=extra_arguments or [])
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=False)


@dataclass
class Case:
    label: str
    seconds: list[float] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    error: str | None = None
    #: phase -> seconds per run, for the breakdown under the table
    parts: dict[str, list[float]] = field(default_factory=dict)
    #: cells the proxy re-ran before the first cell, per run (those completed after the checkpoint)
    replayed: list[int] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def part(self, phase: str, seconds: float) -> None:
        self.parts.setdefault(phase, []).append(seconds)


@dataclass
class Bench:
    use: str
    expected_use: str
    expected_digest: str
    pickle_path: str
    notes: list[str] = field(default_factory=list)

    def check(self, kc: BlockingKernelClient, first: Cell, case: Case) -> None:
        """The use cell printed the original sums, and the state's digest is the original's."""
        if first.stdout != self.expected_use:
            raise RuntimeError(f"{case.label}: the first cell printed {first.stdout!r}, "
                               f"expected {self.expected_use!r}")
        case.digests.append(run(kc, DIGEST).stdout.strip())


def wait_committed(kc: BlockingKernelClient, names: list[str], timeout: float = TIMEOUT) -> str:
    """Block until the newest valid checkpoint holds `names` and the agent has nothing pending."""
    from elastic_proxy.store import open_store

    store = open_store(session=SESSION)
    deadline = time.monotonic() + timeout
    text = run(kc, "%elastic sync").texts()
    while True:
        latest = store.latest()
        status = "\n".join(text)
        stored = set(latest.get("variables", {})) if latest is not None else set()
        if ("pending: nothing" in status and "writing:" not in status and set(names) <= stored):
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"checkpoint not committed after {timeout:.0f} s:\n{status}\n"
                               f"missing from the store: {sorted(set(names) - stored)[:10]}")
        time.sleep(0.5)
        text = run(kc, "%elastic status").texts()


def note_restore(case: Case, first: Cell) -> None:
    """Split a run into the agent's own restore time and everything else; count the replayed cells."""
    restored = restore_seconds(first)
    if restored is None:
        raise RuntimeError(f"{case.label}: no restore report with the first cell: {first.texts()}")
    case.part("restore, as the agent reports it", restored)
    case.part("the rest (not the restore)", case.seconds[-1] - restored)
    replay = re.search(r"Re-ran the cells completed after the checkpoint (.*?)\.", first.stream("stderr"))
    case.replayed.append(replay.group(1).count("[") if replay else 0)


def wait_settled(km: KernelManager, timeout: float = 60.0) -> int:
    """Wait until the supervisor's children are idle, its warm spare (if it keeps one) included, as
    they are when a crash comes long after the last one; returns how many children it has."""
    supervisor = psutil.Process(km.provisioner.process.pid)
    started = time.monotonic()
    previous = None
    while True:
        children = supervisor.children()
        cpu = 0.0
        for child in children:
            try:
                times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu += times.user + times.system
        idle = previous is not None and cpu - previous < 0.02
        waited = time.monotonic() - started
        if (idle and (len(children) >= 2 or waited > 5)) or waited > timeout:
            return len(children)
        previous = cpu
        time.sleep(0.5)


def wait_new_generation(kc: BlockingKernelClient, code: str, timeout: float = TIMEOUT) -> None:
    """Run `code` and wait until the store has a newer valid generation, without running a cell."""
    from elastic_proxy.store import open_store

    store = open_store(session=SESSION)
    before = store.latest()
    run(kc, code)
    deadline = time.monotonic() + timeout
    while True:
        latest = store.latest()
        if latest is not None and (before is None or latest.generation > before.generation):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no checkpoint after {code!r} within {timeout:.0f} s")
        time.sleep(0.05)


def elastic_kill(bench: Bench, km: KernelManager, kc: BlockingKernelClient, case: Case, names: list[str],
                 mark: bool = False) -> None:
    """With `mark`, a last cell binds a variable and the bench waits (reading the store, running no
    cell) for its checkpoint, which then covers every completed cell: the proxy has nothing to re-run.
    Without, the cells run since the last change (the checks, `%elastic sync`) are re-run."""
    log(f"{case.label}: run {len(case.seconds) + 1}, waiting for the checkpoint")
    wait_committed(kc, names)
    if mark:
        wait_new_generation(kc, f"bench_mark = {len(case.seconds)}")
    children = wait_settled(km)
    pid = child_pid(kc, 60)
    log(f"{case.label}: SIGKILL {pid} (the supervisor has {children} children)")
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    first = run_until_ok(kc, bench.use, time.monotonic() + TIMEOUT)
    case.seconds.append(time.perf_counter() - start)
    note_restore(case, first)
    if child_pid(kc, 60) == pid:
        raise RuntimeError("the child pid did not change after SIGKILL")
    if not case.digests:
        bench.notes.append("What the first cell after the first SIGKILL showed besides its output (stderr, "
                           "then the restore report):\n\n```\n" + first.stream("stderr")
                           + "\n".join(first.texts()).strip() + "\n```")
    bench.check(kc, first, case)


def elastic_restart(bench: Bench, km: KernelManager, kc: BlockingKernelClient, case: Case,
                    names: list[str]) -> None:
    log(f"{case.label}: run {len(case.seconds) + 1}, waiting for the checkpoint")
    wait_committed(kc, names)
    wait_settled(km)
    log(f"{case.label}: restart_kernel()")
    start = time.perf_counter()
    km.restart_kernel(now=False)
    case.part("`restart_kernel()` call (shutdown + launch)", time.perf_counter() - start)
    kc.wait_for_ready(timeout=TIMEOUT)
    first = run_until_ok(kc, bench.use, time.monotonic() + TIMEOUT)
    case.seconds.append(time.perf_counter() - start)
    note_restore(case, first)
    bench.check(kc, first, case)


def baseline(bench: Bench, fresh: Case, restart: Case) -> None:
    """A fresh plain ipykernel + pickle.load + the cell; then restart_kernel() + the same."""
    log(f"baseline: run {len(fresh.seconds) + 1}")
    start = time.perf_counter()
    with started(BASELINE_SPEC) as (km, kc):
        fresh.part("kernel start -> ready", time.perf_counter() - start)
        timed_load(bench, kc, fresh, start)

        start = time.perf_counter()
        km.restart_kernel(now=False)
        restart.part("`restart_kernel()` call (shutdown + launch)", time.perf_counter() - start)
        kc.wait_for_ready(timeout=TIMEOUT)
        restart.part("restart -> ready", time.perf_counter() - start)
        timed_load(bench, kc, restart, start)


def timed_load(bench: Bench, kc: BlockingKernelClient, case: Case, start: float) -> None:
    """The load cell, then the cell that uses the state; the run counts from `start`."""
    began = time.perf_counter()
    run(kc, load_cell(bench.pickle_path))
    case.part("`pickle.load` cell", time.perf_counter() - began)
    began = time.perf_counter()
    first = run(kc, bench.use)
    case.part("the cell", time.perf_counter() - began)
    case.seconds.append(time.perf_counter() - start)
    bench.check(kc, first, case)


def dump_cell(path: str) -> str:
    """The user's own save of the same state, written by the kernel that holds it (fsynced)."""
    return ("import os as _os, pickle as _pickle\n"
            f"with open({path!r}, 'wb') as _f:\n"
            "    _pickle.dump({k: v for k, v in globals().items() if k.startswith(('big_', 'small_'))}, _f,\n"
            "                 protocol=_pickle.HIGHEST_PROTOCOL)\n"
            "    _f.flush()\n"
            "    _os.fsync(_f.fileno())\n"
            "del _os, _pickle, _f")


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def attempt(case: Case, fn: Any, *args: Any) -> None:
    """Run one measurement; a failure is recorded on the case (shown in the table) and stops it."""
    if case.error is not None:
        return
    try:
        fn(*args)
    except Exception as exc:
        case.error = f"{type(exc).__name__}: {exc}"


def ratio_cell(case: Case, base: Case) -> str:
    if case is base:
        return "baseline"
    if not case.seconds or not base.seconds:
        return "-"
    return f"{case.median() / base.median():.2f}x"


def table(cases: list[Case], base: Case, targeted: list[Case], expected: str) -> list[str]:
    rows = ["| case | median (s) | min (s) | max (s) | runs | vs baseline | target | state correct |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for case in cases:
        target = "-"
        if any(case is t for t in targeted) and case.seconds and base.seconds:
            met = case.median() <= TARGET_RATIO * base.median()
            target = f"<= {TARGET_RATIO}x: {'met' if met else 'NOT met'}"
        correct = "-"
        if case.digests:
            good = sum(d == expected for d in case.digests)
            correct = f"{good}/{len(case.digests)} digests equal" + ("" if good == len(case.digests) else " (WRONG)")
        if case.seconds:
            times = f"{case.median():.2f} | {min(case.seconds):.2f} | {max(case.seconds):.2f}"
        else:
            times = "- | - | -"
        label = case.label + (f" **FAILED: {case.error}**" if case.error else "")
        rows.append(f"| {label} | {times} | {len(case.seconds)} | {ratio_cell(case, base)} | {target} | {correct} |")
    rows.append("| ElasticKernel 0.2.3, same case (SIGKILL): *from peers.md, not measured here* | - | - | - | - | - "
                "| - | after SIGKILL it silently restores the state of the last graceful shutdown (newer "
                "variables gone, older values back, no warning), or nothing if there was none |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="total size of the large arrays (MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per case (median shown)")
    parser.add_argument("--arrays", type=int, default=4, help="number of large arrays")
    parser.add_argument("--small", type=int, default=100, help="number of small variables")
    args = parser.parse_args(argv)

    per_array = args.size_mb * MiB // args.arrays // 8
    state_code = MAKE_STATE.format(arrays=args.arrays, per_array=per_array, small=args.small)
    names = [f"big_{i}" for i in range(args.arrays)] + [f"small_{i}" for i in range(args.small)]
    use = use_cell(args.arrays, args.small)
    fresh = Case("baseline: fresh plain ipykernel + `pickle.load` of the state + the cell")
    kill = Case("elastic: SIGKILL of the child -> first ok cell on the restored state")
    kill_marked = Case("elastic: the same, with a checkpoint after the last cell (nothing to re-run)")
    restart = Case("elastic: `restart_kernel()` -> first ok cell on the restored state")
    plain_restart = Case("plain ipykernel: `restart_kernel()` + `pickle.load` + the cell")
    with isolated_jupyter() as root:
        pickle_path = os.path.join(root, "state.pkl")
        with started(ELASTIC_SPEC, [f"--storm-limit={args.repeat + 5}"]) as (km, kc):
            log(f"building {args.size_mb} MiB of state")
            run(kc, state_code)
            started_at = time.perf_counter()
            status = wait_committed(kc, names)
            first_commit = (f"First checkpoint of the state committed {time.perf_counter() - started_at:.2f} s "
                            f"after the cell that built it returned:\n\n```\n{status.strip()}\n```")
            run(kc, dump_cell(pickle_path))
            bench = Bench(use, run(kc, use).stdout, run(kc, DIGEST).stdout.strip(), pickle_path, [first_commit])
            for _ in range(args.repeat):
                attempt(kill, elastic_kill, bench, km, kc, kill, names)
                attempt(kill_marked, elastic_kill, bench, km, kc, kill_marked, names, True)
                attempt(fresh, baseline, bench, fresh, plain_restart)
                attempt(restart, elastic_restart, bench, km, kc, restart, names)
            if restart.error is None:
                bench.notes.append("Checkpoint status after the last restart (a restore should not write "
                                   f"the state again):\n\n```\n{wait_committed(kc, names).strip()}\n```")
        sizes = (f"pickle file {os.path.getsize(pickle_path) / MiB:.0f} MiB; "
                 f"store {du(os.path.join(root, 'store')) / MiB:.0f} MiB")
    cases = [fresh, kill, kill_marked, restart, plain_restart]
    print(f"Restore benchmark: {args.arrays} random float64 arrays, {args.size_mb} MiB in all, plus "
          f"{args.small} small variables; {args.repeat} runs per case, interleaved; warm page cache; {sizes}.\n")
    print("\n".join(table(cases, fresh, [kill, kill_marked], bench.expected_digest)))
    print("\nState digest (xxh3_128 over every array's bytes and every small variable's repr): "
          f"{bench.expected_digest}")
    if restart.seconds and plain_restart.seconds:
        print(f"\nelastic `restart_kernel()` vs plain `restart_kernel()` + `pickle.load`: "
              f"{restart.median() / plain_restart.median():.2f}x")
    print("\nWhere the time goes (medians, s):\n")
    for case in cases:
        if case.parts:
            replayed = (f"; cells re-run by the proxy before it (completed after the checkpoint, changing no "
                        f"variable) per run: {case.replayed}" if case.replayed else "")
            print(f"- {case.label}: " + ", ".join(f"{phase} {statistics.median(values):.2f}"
                                                  for phase, values in case.parts.items()) + replayed)
    for note in bench.notes:
        print("\n" + note)
    failed = [c for c in cases if c.error] + [c for c in cases if any(d != bench.expected_digest for d in c.digests)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the supervisor costs a notebook: a bare ipykernel vs the same ipykernel behind elastic-proxy.

All kernels start through jupyter_client's KernelManager from kernelspecs installed the ordinary
way (`ipykernel install`, `elastic-proxy install`) in a private Jupyter dir, and run on the same
machine in one process; measurements are interleaved (one round trip on each kernel in turn) so
that machine noise falls on all of them alike.
- round trip of `x = 1`: execute_request sent -> execute_reply AND `status: idle` received (what a
  notebook client waits for), p50 and p99 over --runs after --warmup;
- IOPub throughput: a cell printing --mb MiB in 1 MiB lines, bytes received / (send -> idle),
  best and median of --repeat; once as ipykernel sends a fast loop (one message of --mb MiB),
  once flushed after every line (--mb messages of 1 MiB, which the proxy can pipeline).
The CPU time of the process Jupyter launched (ipykernel; or the supervisor, its child excluded)
per round trip is shown too: unlike wall times it hardly moves when the machine is busy.
Variants: `direct` (the baseline), `zmq-device` (ipykernel behind libzmq's C forwarder, no Python
per message: the floor that any proxy process pays for the extra hop on this machine, see
bench/zmq_device_kernel.py), `proxy` (supervisor with --no-agent: the proxy alone) and
`proxy+agent` (the installed python3-elastic spec as users get it).
Targets: p50 <= direct + 1 ms; throughput >= 0.8x direct.

Usage: python bench/proxy_overhead.py [--runs 300] [--warmup 30] [--mb 50] [--repeat 5]
                                      [--variants direct,zmq-device,proxy,proxy+agent]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from elastic_proxy.testing_env import private_jupyter

MiB = 1 << 20
DIRECT_SPEC = "bench-direct-ipykernel"
DEVICE_SPEC = "bench-zmq-device"
ELASTIC_SPEC = "python3-elastic"
#: name -> (kernelspec, extra arguments appended to its argv by KernelManager)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "direct": (DIRECT_SPEC, []),
    "zmq-device": (DEVICE_SPEC, []),
    "proxy": (ELASTIC_SPEC, ["--no-agent"]),
    "proxy+agent": (ELASTIC_SPEC, []),
}
TIMEOUT = 120.0


@contextmanager
def isolated_jupyter() -> Iterator[str]:
    """Private Jupyter dirs and store with the three specs installed; yields the root (removed after)."""
    with tempfile.TemporaryDirectory(prefix="elastic-bench-") as root, private_jupyter(Path(root)):
        prefix = os.path.join(root, "prefix")
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", prefix, "--name", DIRECT_SPEC],
                       check=True, capture_output=True)
        device = os.path.join(prefix, "share", "jupyter", "kernels", DEVICE_SPEC)
        os.makedirs(device)
        with open(os.path.join(device, "kernel.json"), "w") as f:
            json.dump({"argv": [sys.executable, os.path.join(os.path.dirname(__file__), "zmq_device_kernel.py"),
                                "{connection_file}"], "display_name": "ipykernel behind zmq.proxy",
                       "language": "python"}, f)
        yield root


@contextmanager
def running_kernel(spec: str, extra_arguments: list[str]
                   ) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=spec)
    km.start_kernel(extra_arguments=extra_arguments)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def wait_reply_and_idle(kc: BlockingKernelClient, msg_id: str, on_iopub=None) -> dict:
    """The execute_reply for msg_id, once its `status: idle` has also arrived."""
    reply = None
    while reply is None:
        msg = kc.get_shell_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if on_iopub is not None:
            on_iopub(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return reply


def round_trip(kc: BlockingKernelClient, code: str = "x = 1") -> float:
    start = time.perf_counter()
    reply = wait_reply_and_idle(kc, kc.execute(code))
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"round-trip cell failed: {reply['content']}")
    return elapsed


#: The two ways a cell prints `mb` MiB: ipykernel buffers a fast loop into ONE stream message of
#: `mb` MiB (the proxy cannot overlap its work with the kernel's), or flushes after every MiB (it can).
PRINT_CELLS = {
    "one message": "for _ in range({mb}): print('x' * {line})",
    "flush per MiB": "import sys\nfor _ in range({mb}): print('x' * {line}); sys.stdout.flush()",
}


def print_throughput(kc: BlockingKernelClient, mb: int, cell: str = "one message") -> float:
    """MiB/s of stdout received for a cell printing `mb` lines of 1 MiB (newline included)."""
    received = 0

    def count(msg: dict) -> None:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])

    code = PRINT_CELLS[cell].format(mb=mb, line=MiB - 1)
    start = time.perf_counter()
    reply = wait_reply_and_idle(kc, kc.execute(code), on_iopub=count)
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok" or received != mb * MiB:
        raise RuntimeError(f"print cell: status {reply['content']['status']}, {received} of {mb * MiB} bytes")
    return received / MiB / elapsed


@dataclass
class Samples:
    round_trips: list[float] = field(default_factory=list)
    #: CPU seconds of the process Jupyter started (ipykernel, or the supervisor) over all round trips
    launched_cpu: float = 0.0
    throughputs: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in PRINT_CELLS})

    def p(self, q: float) -> float:
        return float(np.percentile(self.round_trips, q)) * 1000


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure(running: dict[str, tuple[KernelManager, BlockingKernelClient]], runs: int, warmup: int,
            mb: int, repeat: int) -> dict[str, Samples]:
    samples = {name: Samples() for name in running}
    kernels = {name: kc for name, (_, kc) in running.items()}
    launched = {name: psutil.Process(km.provisioner.process.pid) for name, (km, _) in running.items()}
    order = list(kernels)
    for i in range(warmup + runs):
        if i == warmup:
            cpu_start = {name: _cpu_seconds(p) for name, p in launched.items()}
        for name in (order if i % 2 == 0 else order[::-1]):
            seconds = round_trip(kernels[name])
            if i >= warmup:
                samples[name].round_trips.append(seconds)
    for name, process in launched.items():
        samples[name].launched_cpu = _cpu_seconds(process) - cpu_start[name]
    for name in order:
        for cell in PRINT_CELLS:
            print_throughput(kernels[name], 1, cell)  # warm the stream path
    for i in range(repeat):
        for name in (order if i % 2 == 0 else order[::-1]):
            for cell in PRINT_CELLS:
                samples[name].throughputs[cell].append(print_throughput(kernels[name], mb, cell))
    return samples


def latency_table(samples: dict[str, Samples]) -> list[str]:
    base = samples["direct"].p(50)
    rows = ["| kernel | round trip p50 (ms) | p99 (ms) | p50 vs direct | p50 <= direct + 1 ms "
            "| CPU per round trip of the launched process (ms) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, s in samples.items():
        delta = s.p(50) - base
        shown, met = ("baseline", "-") if name == "direct" else (f"{delta:+.2f} ms", _yes(delta <= 1.0))
        cpu = s.launched_cpu / len(s.round_trips) * 1000
        who = {"direct": "ipykernel", "zmq-device": "forwarder only"}.get(name, "supervisor only")
        rows.append(f"| {name} | {s.p(50):.2f} | {s.p(99):.2f} | {shown} | {met} | {cpu:.2f} ({who}) |")
    return rows


def throughput_table(samples: dict[str, Samples], mb: int) -> list[str]:
    rows = [f"| kernel | cell printing {mb} MiB | best (MiB/s) | median (MiB/s) | best vs direct "
            "| >= 0.8x direct |",
            "| --- | --- | --- | --- | --- | --- |"]
    for cell in PRINT_CELLS:
        base = max(samples["direct"].throughputs[cell])
        for name, s in samples.items():
            best, median = max(s.throughputs[cell]), statistics.median(s.throughputs[cell])
            ratio = best / base
            shown, met = ("baseline", "-") if name == "direct" else (f"{ratio:.2f}x", _yes(ratio >= 0.8))
            rows.append(f"| {name} | {cell} | {best:.0f} | {median:.0f} | {shown} | {met} |")
    return rows


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(samples: dict[str, Samples], args: argparse.Namespace) -> str:
    return "\n".join([
        f"Proxy overhead: `x = 1` round trip (execute_reply + idle), {args.runs} interleaved runs after "
        f"{args.warmup} warm-up:",
        "",
        *latency_table(samples),
        "",
        f"IOPub throughput, {args.repeat} interleaved runs per cell:",
        "",
        *throughput_table(samples, args.mb),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)}; direct is always included")
    args = parser.parse_args(argv)
    names = ["direct", *(v for v in args.variants.split(",") if v and v != "direct")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants: {unknown}")
    with isolated_jupyter(), ExitStack() as stack:
        running = {name: stack.enter_context(running_kernel(*VARIANTS[name])) for name in names}
        samples = measure(running, args.runs, args.warmup, args.mb, args.repeat)
    print(report(samples, args))


if __name__ == "__main__":
    main()

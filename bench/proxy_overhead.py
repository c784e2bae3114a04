"""What the supervisor costs a notebook: a bare ipykernel vs the same ipykernel behind elastic-proxy.

All kernels start through jupyter_client's KernelManager from kernelspecs installed the ordinary
way (`ipykernel install`, `elastic-proxy install`) in a private Jupyter dir, and run on the same
machine in one process; measurements are interleaved (one round trip on each kernel in turn) so
that machine noise falls on all of them alike.
- round trip of `x = 1`: execute_request sent -> execute_reply AND `status: idle` received (what a
  notebook client waits for), p50 and p99 over --runs after --warmup;
- IOPub throughput: a cell printing --mb MiB in 1 MiB lines, bytes received / (send -> idle),
  best and median of --repeat.
Variants: `direct` (the baseline), `proxy` (supervisor with --no-agent: the proxy alone) and
`proxy+agent` (the installed python3-elastic spec as users get it).
Targets: p50 <= direct + 1 ms; throughput >= 0.8x direct.

Usage: python bench/proxy_overhead.py [--runs 300] [--warmup 30] [--mb 50] [--repeat 5]
                                      [--variants direct,proxy,proxy+agent]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

MiB = 1 << 20
DIRECT_SPEC = "bench-direct-ipykernel"
ELASTIC_SPEC = "python3-elastic"
#: name -> (kernelspec, extra arguments appended to its argv by KernelManager)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "direct": (DIRECT_SPEC, []),
    "proxy": (ELASTIC_SPEC, ["--no-agent"]),
    "proxy+agent": (ELASTIC_SPEC, []),
}
TIMEOUT = 120.0


@contextmanager
def isolated_jupyter() -> Iterator[str]:
    """Private Jupyter dirs and store with both specs installed; yields the root (removed after)."""
    with tempfile.TemporaryDirectory(prefix="elastic-bench-") as root:
        prefix = os.path.join(root, "prefix")
        env = {
            "JUPYTER_PATH": os.path.join(prefix, "share", "jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(root, "data"),
            "JUPYTER_RUNTIME_DIR": os.path.join(root, "runtime"),
            "JUPYTER_CONFIG_DIR": os.path.join(root, "config"),
            "IPYTHONDIR": os.path.join(root, "ipython"),
            "ELASTIC_PROXY_STORE": os.path.join(root, "store"),
            "ELASTIC_PROXY_SECRET_FILE": os.path.join(root, "secret"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            for argv in (["-m", "ipykernel", "install", "--prefix", prefix, "--name", DIRECT_SPEC],
                         ["-m", "elastic_proxy", "install", "--prefix", prefix]):
                subprocess.run([sys.executable, *argv], check=True, capture_output=True)
            yield root
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


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


def print_throughput(kc: BlockingKernelClient, mb: int) -> float:
    """MiB/s of stdout received for a cell printing `mb` lines of 1 MiB (newline included)."""
    received = 0

    def count(msg: dict) -> None:
        nonlocal received
        if msg["msg_type"] == "stream":
            received += len(msg["content"]["text"])

    code = f"for _ in range({mb}): print('x' * {MiB - 1})"
    start = time.perf_counter()
    reply = wait_reply_and_idle(kc, kc.execute(code), on_iopub=count)
    elapsed = time.perf_counter() - start
    if reply["content"]["status"] != "ok" or received != mb * MiB:
        raise RuntimeError(f"print cell: status {reply['content']['status']}, {received} of {mb * MiB} bytes")
    return received / MiB / elapsed


@dataclass
class Samples:
    round_trips: list[float] = field(default_factory=list)
    throughputs: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return float(np.percentile(self.round_trips, q)) * 1000


def measure(kernels: dict[str, BlockingKernelClient], runs: int, warmup: int, mb: int,
            repeat: int) -> dict[str, Samples]:
    samples = {name: Samples() for name in kernels}
    order = list(kernels)
    for i in range(warmup + runs):
        turn = order if i % 2 == 0 else order[::-1]
        for name in turn:
            seconds = round_trip(kernels[name])
            if i >= warmup:
                samples[name].round_trips.append(seconds)
    for name in order:
        print_throughput(kernels[name], 1)  # warm the stream path
    for i in range(repeat):
        for name in (order if i % 2 == 0 else order[::-1]):
            samples[name].throughputs.append(print_throughput(kernels[name], mb))
    return samples


def table(samples: dict[str, Samples], args: argparse.Namespace) -> str:
    base = samples["direct"]
    rows = [
        "| kernel | round trip p50 (ms) | p99 (ms) | p50 vs direct | throughput best (MiB/s) "
        "| median (MiB/s) | best vs direct | targets met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in samples.items():
        best, median = max(s.throughputs), statistics.median(s.throughputs)
        if name == "direct":
            delta, ratio, met = "baseline", "baseline", "-"
        else:
            d = s.p(50) - base.p(50)
            r = best / max(base.throughputs)
            delta, ratio = f"{d:+.2f} ms", f"{r:.2f}x"
            met = ("yes" if d <= 1.0 else "NO (p50)") + ", " + ("yes" if r >= 0.8 else "NO (throughput)")
        rows.append(f"| {name} | {s.p(50):.2f} | {s.p(99):.2f} | {delta} | {best:.0f} | {median:.0f} "
                    f"| {ratio} | {met} |")
    head = (f"Proxy overhead: `x = 1` round trip (reply + idle) over {args.runs} interleaved runs after "
            f"{args.warmup} warm-up; a cell printing {args.mb} MiB, {args.repeat} runs. "
            f"Targets: p50 <= direct + 1 ms, throughput >= 0.8x direct.")
    return head + "\n\n" + "\n".join(rows)


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
        kernels = {name: stack.enter_context(running_kernel(*VARIANTS[name]))[1] for name in names}
        samples = measure(kernels, args.runs, args.warmup, args.mb, args.repeat)
    print(table(samples, args))


if __name__ == "__main__":
    main()

"""Per-cell overhead of the inner agent, against a plain ipykernel, side by side in one run.

Two real kernels through jupyter_client: "plain" (stock ipykernel) and "agent" (the same with
`%load_ext elastic_proxy.inner_agent`). For each namespace -- (a) nothing, (b) a 200 MB array,
(c) list(range(5_000_000)), (d) a 1M-entry dict -- a trivial cell is timed from the client
(execute_request to execute_reply), interleaving the two kernels so drift hits both alike.
Three trivial cells: `1 + 1` (changes nothing), `x = 1` (binds x to an equal value: nothing to write
after its first run) and `n += 1` (a new value every run: a checkpoint follows each one).
Then a cell that creates a 1 GB array and the cell right after it: the agent's extra time on
those two is the user-visible pause from recording and checkpointing.

Target: p50 within +3 ms of plain in all four; pause under 50 ms. Baseline for comparison
(docs/peers.md): ElasticKernel adds 0.7-1.1 s per trivial cell on (c) and (d).

    .venv/bin/python bench/agent_overhead.py [--runs 60]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from _common import CLEAR, SCENARIOS, START, TRIVIAL, delta, ms, percentile
from jupyter_client.manager import KernelManager


class Kernel:
    def __init__(self, name: str, env: dict[str, str], agent: bool) -> None:
        self.name = name
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.agent = agent
        self.run(START)
        if agent:
            self.run("%load_ext elastic_proxy.inner_agent")

    def run(self, code: str) -> float:
        """Seconds from sending the request to receiving its reply (what the user waits)."""
        started = time.perf_counter()
        reply = self.kc.execute(code, reply=True, timeout=600)
        elapsed = time.perf_counter() - started
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{self.name}: {code!r} failed: {reply['content']}")
        return elapsed

    def stdout(self, code: str) -> str:
        msg_id = self.kc.execute(code)
        text = ""
        while True:
            msg = self.kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                text += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return text

    def settle(self) -> None:
        """Let a background checkpoint finish so it does not skew the next timing."""
        if self.agent:
            self.run("%elastic sync")

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


AGENT = "__import__('elastic_proxy.inner_agent', fromlist=['x']).get_agent(get_ipython())"


def hook_times(agent: Kernel, clear: bool = False) -> list[float]:
    """The agent's own measure of its hooks' time per cell (in-kernel, free of client noise)."""
    if clear:
        agent.run(f"{AGENT}.overhead.clear()")
        return []
    text = agent.stdout(f"print(list({AGENT}.overhead))")
    return [float(x) for x in text.strip().strip("[]").split(",") if x.strip()]


def measure(plain: Kernel, agent: Kernel, code: str, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"plain": [], "agent": []}
    for _ in range(3):
        plain.run(code)
        agent.run(code)
    hook_times(agent, clear=True)
    agent.settle()  # after: a cell naming the agent reads every variable, so the big one is written again
    for _ in range(runs):
        times["plain"].append(plain.run(code))
        times["agent"].append(agent.run(code))
    times["hooks"] = hook_times(agent)[1:]
    agent.settle()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="elastic-bench-")
    env = dict(os.environ)
    env.update(ELASTIC_PROXY_STORE=os.path.join(workdir, "store"),
               ELASTIC_PROXY_SECRET_FILE=os.path.join(workdir, "secret"),
               ELASTIC_PROXY_SESSION="bench/agent_overhead", ELASTIC_PROXY_RESTORE="off")
    plain = Kernel("plain", env, agent=False)
    agent = Kernel("agent", env, agent=True)
    rows: list[list[str]] = []
    try:
        for label, setup in SCENARIOS:
            plain.run(setup)
            agent.run(setup)
            agent.settle()
            for trivial_label, code in TRIVIAL:
                t = measure(plain, agent, code, args.runs)
                p50 = (statistics.median(t["plain"]), statistics.median(t["agent"]))
                p99 = (percentile(t["plain"], 0.99), percentile(t["agent"], 0.99))
                hooks = t["hooks"]
                rows.append([label, trivial_label, ms(p50[0]), ms(p50[1]), delta(*p50),
                             f"{p50[1] / p50[0]:.2f}", ms(p99[0]), ms(p99[1]), delta(*p99),
                             ms(statistics.median(hooks)), ms(percentile(hooks, 0.99))])
            plain.run(CLEAR)
            agent.run(CLEAR)
            agent.settle()
        pause = one_gigabyte(plain, agent)
        fork = agent_status(agent)
    finally:
        plain.close()
        agent.close()
    print(f"\nagent overhead per trivial cell, {args.runs} runs each, client-side round trip (ms)\n")
    print("| namespace | cell | plain p50 | agent p50 | delta p50 | ratio p50 | plain p99 | agent p99 "
          "| delta p99 | agent hooks p50 | agent hooks p99 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n1 GB array: user-visible pause from recording + checkpointing (ms; inner = the cell's own run "
          "time inside the kernel; pause = agent (client - inner) - plain (client - inner))\n")
    print("| cell | plain client | plain inner | agent client | agent inner | pause | agent hooks |")
    print("|---|---|---|---|---|---|---|")
    for label, (pc, pi, ac, ai, hooks) in pause.items():
        print(f"| {label} | {ms(pc)} | {ms(pi)} | {ms(ac)} | {ms(ai)} | {delta(pc - pi, ac - ai)} | {ms(hooks)} |")
    print(f"\nthe 1 GB checkpoint itself (background): {fork}")


TIMED = "import time as T_\nt_ = T_.perf_counter()\n{code}\nprint(T_.perf_counter() - t_)\ndel T_, t_"


def timed(kernel: Kernel, code: str) -> tuple[float, float]:
    """(client round trip, the cell's own run time measured inside the kernel)."""
    started = time.perf_counter()
    inner = float(kernel.stdout(TIMED.format(code=code)).split()[-1])
    return time.perf_counter() - started, inner


def one_gigabyte(plain: Kernel, agent: Kernel) -> dict[str, tuple[float, ...]]:
    """Medians of 3 rounds, per cell: plain (client, inner), agent (client, inner), agent hooks.
    The pause is what the agent adds around the cell: (client - inner) minus plain's."""
    labels = ["`huge = np.ones(125_000_000)`", "next cell `1 + 1`"]
    rounds: list[list[tuple[float, ...]]] = [[], []]
    for _ in range(3):
        for index, code in enumerate(["huge = np.ones(125_000_000)", "1 + 1"]):
            hook_times(agent, clear=True)
            measured = (*timed(plain, code), *timed(agent, code))
            rounds[index].append((*measured, hook_times(agent)[1]))
        agent.settle()
        plain.run("huge = None")
        agent.run("huge = None")
        agent.settle()
    return {label: tuple(statistics.median(col) for col in zip(*rs)) for label, rs in zip(labels, rounds)}


def agent_status(agent: Kernel) -> Any:
    agent.run("huge = np.ones(125_000_000)")
    agent.settle()
    return agent.stdout(f"print({AGENT}.checkpointer.status())").strip()


if __name__ == "__main__":
    main()

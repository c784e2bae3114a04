"""How fast a notebook hears that its kernel process died, and how soon it can run the next cell.

A `python3-elastic` kernel (installed with `elastic-proxy install` in a private Jupyter dir,
started by jupyter_client's KernelManager) runs a cell that sleeps; once the cell has started, the
child process (its pid from the proxy's usage_reply, checked against the proxy's psutil children,
which include the warm spare when the proxy keeps one)
is killed with SIGKILL. Measured from the kill:
- the error execute_reply of the killed cell (target p50 < 0.5 s), and its `status: idle`;
- the next cell's ok reply + idle: it is sent right after the error reply and waits for the new child.
The restart storm guard is raised (--storm-limit) since this kills the child on purpose, many times.

Usage: python bench/death_to_reply.py [--kills 20] [--no-agent] [--settle 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from proxy_overhead import ELASTIC_SPEC, TIMEOUT, isolated_jupyter, running_kernel, wait_reply_and_idle

TARGET_REPLY_P50 = 0.5


def child_pid(km: KernelManager, kc: BlockingKernelClient) -> int:
    """The serving child's pid as the proxy reports it (usage_request); it must be a child of the proxy
    (which may also hold a warm spare)."""
    request = kc.session.msg("usage_request", {})
    kc.control_channel.send(request)
    while True:
        reply = kc.get_control_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            break
    pid = reply["content"]["pid"]
    children = [p.pid for p in psutil.Process(km.provisioner.process.pid).children()]
    if pid not in children:
        raise RuntimeError(f"usage_reply says the child is {pid}, the proxy's children are {children}")
    return pid


def wait_started(kc: BlockingKernelClient, msg_id: str) -> None:
    """Block until the child has begun the cell (its execute_input is on IOPub)."""
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return


@dataclass
class Kill:
    reply: float
    idle: float
    next_cell: float


@dataclass
class Results:
    kills: list[Kill] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        return [getattr(k, name) for k in self.kills]


def kill_once(km: KernelManager, kc: BlockingKernelClient, settle: float) -> Kill:
    time.sleep(settle)
    pid = child_pid(km, kc)
    msg_id = kc.execute("import time; time.sleep(600)")
    wait_started(kc, msg_id)
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    replied = time.perf_counter()
    content = reply["content"]
    if content["status"] != "error" or content.get("ename") != "KernelDied":
        raise RuntimeError(f"the killed cell was answered with {content}")
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break
    idle = time.perf_counter()
    after = wait_reply_and_idle(kc, kc.execute("40 + 2"))
    done = time.perf_counter()
    if after["content"]["status"] != "ok":
        raise RuntimeError(f"the cell after the kill failed: {after['content']}")
    if child_pid(km, kc) == pid:
        raise RuntimeError("the child pid did not change after SIGKILL")
    return Kill(replied - killed, idle - killed, done - killed)


def table(results: Results, args: argparse.Namespace) -> str:
    rows = [
        "| from SIGKILL of the child to | p50 (s) | p90 (s) | max (s) | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    labels = {"reply": "error execute_reply at the client", "idle": "`status: idle` of the killed cell",
              "next_cell": "next cell's ok reply + idle (new child)"}
    for name, label in labels.items():
        values = results.column(name)
        p50, p90 = np.percentile(values, [50, 90])
        target = ""
        if name == "reply":
            target = f"< {TARGET_REPLY_P50} s: {'met' if p50 < TARGET_REPLY_P50 else 'NOT met'}"
        rows.append(f"| {label} | {p50:.3f} | {p90:.3f} | {max(values):.3f} | {target} |")
    agent = "without the agent (--no-agent)" if args.no_agent else "with the agent (the installed spec)"
    head = (f"Death to reply: {args.kills} SIGKILLs of the child of `{ELASTIC_SPEC}`, {agent}, "
            f"{args.settle:g} s after the previous cell.")
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--no-agent", action="store_true", help="run the proxy without the agent")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to wait before each kill, so a warm spare started after the previous "
                             "death is up (crashes are rare; a spare that is still starting measures a cold start)")
    args = parser.parse_args(argv)
    extra = [f"--storm-limit={args.kills + 10}"] + (["--no-agent"] if args.no_agent else [])
    results = Results()
    with isolated_jupyter(), running_kernel(ELASTIC_SPEC, extra) as (km, kc):
        wait_reply_and_idle(kc, kc.execute("pass"))
        for _ in range(args.kills):
            results.kills.append(kill_once(km, kc, args.settle))
    print(table(results, args))


if __name__ == "__main__":
    main()

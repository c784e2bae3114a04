"""The agent's answer to the supervisor after a child starts.

The supervisor evaluates `summary(N, restore_now)` as a user expression (so no cell is used up) once the
new child answers. It learns whether the agent restored a checkpoint and from which cell, so it
replays only the cells that completed after it. It passes the last execution count the user saw,
so the child's numbering (and the agent's cell numbers in later checkpoints) match the user's.
A warm spare is started with ELASTIC_PROXY_RESTORE=deferred and restores only when promoted,
since the state to restore is only known once the child it replaces has died.
"""

from __future__ import annotations

import os
from typing import Any


def summary(last_execution_count: int, restore_now: bool = False) -> dict[str, Any]:
    """Set the execution counter, restore first if asked (a warm spare starts empty), report."""
    from IPython import get_ipython

    from elastic_proxy.inner_agent import get_agent

    shell = get_ipython()
    agent = get_agent(shell)
    if agent is None:
        raise RuntimeError("the elastic-proxy agent is not loaded in this kernel")
    if restore_now:
        agent.pending_report = agent.restore()
    shell.execution_count = max(shell.execution_count, last_execution_count + 1)
    report = agent.last_report
    restored_cell = report.cell if report is not None and report.generation is not None else None
    return {
        "restore": restore_now or os.environ.get("ELASTIC_PROXY_RESTORE", "off").lower() == "auto",
        "restored_cell": restored_cell,
        "execution_count": shell.execution_count - 1,
    }

"""Runs inside the kernel: restore one generation with every value loaded, or every value rebuilt.

The agent has no switch for that: its planner picks per alias group. This wraps the planner's
entry point in `restore` for the duration of one `Agent.restore`: "load" blocks every cell from
re-running (what cannot be loaded is lost, with the reason), "recompute" marks every group as
not stored (what cannot be rebuilt is lost, with the reason). Everything else (loading,
re-running, verification, the report) is the agent's own code path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODES = ("load", "recompute")


def restore(shell: Any, generation: int, mode: str) -> dict[str, Any]:
    """`Agent.restore(generation)` with the plan forced to `mode`; the report as JSON."""
    from elastic_proxy.inner_agent import get_agent
    from elastic_proxy.inner_agent import restore as restore_module

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    agent = get_agent(shell)
    if agent is None:
        raise RuntimeError("the elastic-proxy agent is not loaded in this kernel")
    planner = restore_module.plan

    def forced(graph: Any, groups: dict[str, Any], blocked_cells: dict[int, str] | None = None) -> Any:
        blocked = dict(blocked_cells or {})
        if mode == "load":
            blocked.update({index: "load only (coverage table)" for index in graph.cells})
        else:
            groups = {gid: dataclasses.replace(cost, serializable=False) for gid, cost in groups.items()}
        return planner(graph, groups, blocked_cells=blocked)

    restore_module.plan = forced
    try:
        return agent.restore(generation).to_json()
    finally:
        restore_module.plan = planner

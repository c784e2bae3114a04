"""Migrate-or-recompute planning: an exact minimum cut over the session graph.

Decision per alias group (the unit that is pickled and loaded together): load it from the
store, or rebuild it by re-running cells. The choice is a closure problem ("re-running a cell
needs its older inputs rebuilt, and overwrites everything it wrote") solved exactly as a
minimum s-t cut. Costs are deterministic functions of recorded facts: stored bytes over a FIXED
nominal bandwidth and recorded cell runtimes. No disk probe, so the plan for a given session
never flips between runs (a flipped plan once turned an unseeded random array into new values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from networkx.algorithms.flow import shortest_augmenting_path

from .graph import SessionGraph

NOMINAL_BANDWIDTH = 200e6
"""Bytes per second assumed for loading from the store. Fixed on purpose (see module docstring)."""

SIDE_EFFECT_PENALTY = 10**9
"""Seconds charged for re-running a cell with external side effects: only when nothing else can rebuild."""

_UNITS_PER_SECOND = 1_000_000
"""Integer capacities (microseconds) keep the max-flow exact. Every capacity is then scaled by
(number of cells + 1) and each re-run gets one extra unit: that breaks ties towards loading,
which is never less faithful than recomputing, without changing any strict preference."""

_SOURCE = ("source",)
_SINK = ("sink",)


@dataclass(frozen=True)
class GroupCost:
    """What the optimizer needs to know about one alias group."""

    names: frozenset[str]
    size_bytes: int
    serializable: bool = True


@dataclass
class Plan:
    """The outcome: which groups load, which rebuild, which cells re-run, and what cannot come back."""

    migrate: set[str] = field(default_factory=set)
    recompute: set[str] = field(default_factory=set)
    rerun_cells: list[int] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    side_effect_cells: dict[int, str] = field(default_factory=dict)
    cost_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "migrate": sorted(self.migrate),
            "recompute": sorted(self.recompute),
            "rerun_cells": list(self.rerun_cells),
            "lost": dict(sorted(self.lost.items())),
            "side_effect_cells": {str(k): v for k, v in sorted(self.side_effect_cells.items())},
            "cost_seconds": self.cost_seconds,
        }


def load_seconds(size_bytes: int) -> float:
    return size_bytes / NOMINAL_BANDWIDTH


def _load_units(size_bytes: int, scale: int) -> int:
    return scale * (size_bytes * _UNITS_PER_SECOND // int(NOMINAL_BANDWIDTH))


def forbidden_reason(graph: SessionGraph, index: int) -> str | None:
    """Why a cell may never be re-run, or None. Re-running it would be wrong or destructive."""
    cell = graph.cells[index]
    if cell.destructive:
        return "its cell " + _cell_label(graph, index) + " " + ", ".join(cell.destructive)
    if cell.nondeterministic:
        return "its cell " + _cell_label(graph, index) + " is nondeterministic (" + ", ".join(
            cell.nondeterministic
        ) + ")"
    if cell.error is not None:
        return "its cell " + _cell_label(graph, index) + " raised " + cell.error
    return None


def _cell_label(graph: SessionGraph, index: int) -> str:
    return f"[{graph.cells[index].execution_count}]"


def implication_graph(graph: SessionGraph, groups: Mapping[str, GroupCost]) -> nx.DiGraph:
    """Edges x -> y meaning "if x is rebuilt/re-run, y must be too"."""
    owner = {name: gid for gid, group in groups.items() for name in group.names}
    implies = nx.DiGraph()
    for gid, group in sorted(groups.items()):
        implies.add_node(("group", gid))
        for name in sorted(group.names):
            for index in graph.producers(name):
                implies.add_edge(("group", gid), ("cell", index))
    for index in sorted(graph.cells):
        node = ("cell", index)
        implies.add_node(node)
        for name, version in sorted(graph.reads_of(index).items()):
            if not graph.is_current(name, version):
                for producer in graph.producers(name, version):
                    implies.add_edge(node, ("cell", producer))
        for name in sorted(graph.cells[index].written):
            if name in owner:
                implies.add_edge(node, ("group", owner[name]))
    return implies


def plan(
    graph: SessionGraph, groups: Mapping[str, GroupCost], *, blocked_cells: Mapping[int, str] | None = None
) -> Plan:
    """Choose, per alias group, migrate or recompute at minimum total estimated time.

    `blocked_cells` adds cells that may not re-run this time, with the reason, which comes first
    (a restore that skips variables at the user's request never re-runs the cells that make or
    read them, and says so)."""
    implies = implication_graph(graph, groups)
    blocked = {index: forbidden_reason(graph, index) for index in graph.cells}
    blocked.update({index: why for index, why in (blocked_cells or {}).items() if index in blocked})
    result = Plan()
    lost_groups: set[str] = set()
    for gid, group in sorted(groups.items()):
        if group.serializable:
            continue
        reason = _recompute_blocker(implies, ("group", gid), blocked)
        if reason is not None:
            lost_groups.add(gid)
            for name in group.names:
                result.lost[name] = "not serializable, and " + reason
    if lost_groups:
        implies.remove_nodes_from([("group", gid) for gid in lost_groups])

    scale = len(graph.cells) + 1
    # Nodes in one strongly connected component of the implications move together: contract them.
    components = nx.condensation(implies)
    flow = nx.DiGraph()
    flow.add_node(_SOURCE)
    flow.add_node(_SINK)
    for component, data in sorted(components.nodes(data=True)):
        rerun, load = 0, 0
        rerun_forbidden = load_forbidden = False
        for node in data["members"]:
            if node[0] == "cell":
                rerun_forbidden |= blocked[node[1]] is not None
                rerun += _rerun_units(graph, node[1], scale)
            elif groups[node[1]].serializable:
                load += _load_units(groups[node[1]].size_bytes, scale)
            else:
                load_forbidden = True
        if rerun_forbidden:
            flow.add_edge(_SOURCE, component)
        elif rerun:
            flow.add_edge(_SOURCE, component, capacity=rerun)
        if load_forbidden:
            flow.add_edge(component, _SINK)
        elif load:
            flow.add_edge(component, _SINK, capacity=load)
    for x, y in sorted(components.edges):
        flow.add_edge(y, x)

    cut_value, (_keep, rebuilt) = nx.minimum_cut(flow, _SOURCE, _SINK, flow_func=shortest_augmenting_path)
    rebuild = {node for c in rebuilt if c not in (_SOURCE, _SINK) for node in components.nodes[c]["members"]}
    result.cost_seconds = (cut_value // scale) / _UNITS_PER_SECOND
    for gid in sorted(groups):
        if gid in lost_groups:
            continue
        if ("group", gid) in rebuild:
            result.recompute.add(gid)
        else:
            result.migrate.add(gid)
    result.rerun_cells = sorted(node[1] for node in rebuild if node[0] == "cell")
    for index in result.rerun_cells:
        cell = graph.cells[index]
        if cell.side_effects:
            result.side_effect_cells[index] = (
                "re-run although it has side effects (" + ", ".join(cell.side_effects) + "): nothing else "
                "can rebuild what it made"
            )
    return result


def _rerun_units(graph: SessionGraph, index: int, scale: int) -> int:
    cell = graph.cells[index]
    seconds = cell.runtime + (SIDE_EFFECT_PENALTY if cell.side_effects else 0)
    return scale * int(seconds * _UNITS_PER_SECOND) + 1


def _recompute_blocker(implies: nx.DiGraph, start: tuple, blocked: Mapping[int, str | None]) -> str | None:
    """The reason some cell needed to rebuild `start` may not run, or None if it can be rebuilt."""
    needed = nx.descendants(implies, start) | {start}
    producers = [node[1] for node in needed if node[0] == "cell"]
    if not any(node[0] == "cell" for node in implies.successors(start)):
        return "no recorded cell produced it"
    for index in sorted(producers):
        if blocked.get(index) is not None:
            return str(blocked[index])
    return None

"""The session's dependency graph: cell executions and the variable versions they read and write.

Pure logic, no I/O. Each write of a name (bind, mutate, delete) makes a new version; a cell
reads the version that was current when it ran. The optimizer asks two questions of it:
"which cells must re-run to rebuild this version of this name?" and "which names does
re-running this cell overwrite?". Nodes are networkx nodes so the whole thing can be
inspected, drawn, and stored in a manifest as node-link JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import networkx as nx

BIND = "bind"
MUTATE = "mutate"
DELETE = "delete"


@dataclass
class CellExecution:
    """One recorded cell execution, with what it did to the namespace."""

    index: int
    execution_count: int
    code: str
    runtime: float = 0.0
    reads: frozenset[str] = frozenset()
    created: frozenset[str] = frozenset()
    rebound: frozenset[str] = frozenset()
    mutated: frozenset[str] = frozenset()
    deleted: frozenset[str] = frozenset()
    error: str | None = None
    side_effects: tuple[str, ...] = ()
    destructive: tuple[str, ...] = ()
    nondeterministic: tuple[str, ...] = ()

    @property
    def written(self) -> frozenset[str]:
        return self.created | self.rebound | self.mutated | self.deleted

    @property
    def changed_state(self) -> bool:
        return bool(self.written)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, (frozenset, set, tuple)):
                data[key] = sorted(value)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellExecution:
        kwargs = dict(data)
        for key in ("reads", "created", "rebound", "mutated", "deleted"):
            kwargs[key] = frozenset(kwargs.get(key, ()))
        for key in ("side_effects", "destructive", "nondeterministic"):
            kwargs[key] = tuple(kwargs.get(key, ()))
        return cls(**kwargs)


@dataclass
class _Version:
    cell: int
    kind: str


@dataclass
class SessionGraph:
    """Cell executions and name versions, kept in a networkx DiGraph.

    Nodes: ("cell", index) and ("var", name, version). Edges: var -> cell for a read,
    cell -> var for a write, var(v) -> var(v+1) when v+1 is a mutation of v.
    """

    cells: dict[int, CellExecution] = field(default_factory=dict)
    nx_graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    _versions: dict[str, list[_Version]] = field(default_factory=dict)
    _reads: dict[int, dict[str, int]] = field(default_factory=dict)

    def add_cell(self, cell: CellExecution) -> None:
        """Record a cell: its reads bind to the current versions, its writes make new ones."""
        if cell.index in self.cells:
            raise ValueError(f"cell {cell.index} already recorded")
        self.cells[cell.index] = cell
        node = ("cell", cell.index)
        self.nx_graph.add_node(node, runtime=cell.runtime)
        reads: dict[str, int] = {}
        for name in sorted(cell.reads):
            version = self.current_version(name)
            if version is not None:
                reads[name] = version
                self.nx_graph.add_edge(("var", name, version), node)
        self._reads[cell.index] = reads
        for name, kind in self._writes_of(cell):
            previous = self.current_version(name)
            history = self._versions.setdefault(name, [])
            history.append(_Version(cell.index, kind))
            new = ("var", name, len(history) - 1)
            self.nx_graph.add_edge(node, new, kind=kind)
            if kind == MUTATE and previous is not None:
                self.nx_graph.add_edge(("var", name, previous), new)

    @staticmethod
    def _writes_of(cell: CellExecution) -> list[tuple[str, str]]:
        writes = [(name, BIND) for name in sorted(cell.created | cell.rebound)]
        writes += [(name, MUTATE) for name in sorted(cell.mutated - cell.created - cell.rebound)]
        writes += [(name, DELETE) for name in sorted(cell.deleted)]
        return writes

    def current_version(self, name: str) -> int | None:
        """The live version of a name, or None if it does not exist (never made, or deleted)."""
        history = self._versions.get(name)
        if not history or history[-1].kind == DELETE:
            return None
        return len(history) - 1

    def live_names(self) -> set[str]:
        return {name for name in self._versions if self.current_version(name) is not None}

    def reads_of(self, index: int) -> dict[str, int]:
        return dict(self._reads.get(index, {}))

    def producers(self, name: str, version: int | None = None) -> list[int]:
        """Cells to re-run, in order, to rebuild this version: its last bind and the mutations after."""
        history = self._versions.get(name, [])
        if version is None:
            version = self.current_version(name)
        if version is None:
            return []
        chain: list[int] = []
        for entry in reversed(history[: version + 1]):
            if entry.kind == DELETE:
                break
            chain.append(entry.cell)
            if entry.kind == BIND:
                break
        return sorted(set(chain))

    def is_current(self, name: str, version: int) -> bool:
        return self.current_version(name) == version

    def cells_up_to(self, execution_count: int) -> list[CellExecution]:
        return [c for i, c in sorted(self.cells.items()) if c.execution_count <= execution_count]

    def to_json(self) -> dict[str, Any]:
        return {"cells": [self.cells[i].to_json() for i in sorted(self.cells)]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionGraph:
        graph = cls()
        for cell in data.get("cells", []):
            graph.add_cell(CellExecution.from_json(cell))
        return graph

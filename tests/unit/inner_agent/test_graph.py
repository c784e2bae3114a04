"""SessionGraph: versions, reads, and which cells rebuild which version."""

from __future__ import annotations

from elastic_proxy.inner_agent.graph import CellExecution, SessionGraph


def cell(index: int, **kw) -> CellExecution:
    kw = {k: frozenset(v) if isinstance(v, (set, list)) else v for k, v in kw.items()}
    return CellExecution(index=index, execution_count=index + 1, code=f"# cell {index}", **kw)


def test_versions_follow_binds_mutations_and_deletes():
    g = SessionGraph()
    g.add_cell(cell(0, created={"a"}))
    g.add_cell(cell(1, reads={"a"}, mutated={"a"}))
    g.add_cell(cell(2, reads={"a"}, created={"b"}))
    g.add_cell(cell(3, deleted={"b"}))
    assert g.current_version("a") == 1
    assert g.current_version("b") is None
    assert g.live_names() == {"a"}
    assert g.reads_of(1) == {"a": 0}
    assert g.reads_of(2) == {"a": 1}


def test_producers_are_last_bind_and_later_mutations():
    g = SessionGraph()
    g.add_cell(cell(0, created={"x"}))
    g.add_cell(cell(1, reads={"x"}, mutated={"x"}))
    g.add_cell(cell(2, rebound={"x"}))
    g.add_cell(cell(3, reads={"x"}, mutated={"x"}))
    g.add_cell(cell(4, reads={"x"}, mutated={"x"}))
    assert g.producers("x") == [2, 3, 4]
    assert g.producers("x", 1) == [0, 1]
    assert g.producers("x", 3) == [2, 3]


def test_reads_of_unknown_names_are_ignored():
    g = SessionGraph()
    g.add_cell(cell(0, reads={"print", "np"}, created={"y"}))
    assert g.reads_of(0) == {}


def test_graph_is_networkx_with_read_and_write_edges():
    g = SessionGraph()
    g.add_cell(cell(0, created={"a"}))
    g.add_cell(cell(1, reads={"a"}, mutated={"a"}))
    edges = set(g.nx_graph.edges)
    assert (("cell", 0), ("var", "a", 0)) in edges
    assert (("var", "a", 0), ("cell", 1)) in edges
    assert (("cell", 1), ("var", "a", 1)) in edges
    assert (("var", "a", 0), ("var", "a", 1)) in edges


def test_json_round_trip_keeps_everything():
    g = SessionGraph()
    g.add_cell(cell(0, created={"a"}, runtime=0.5, side_effects=("file_write",)))
    g.add_cell(cell(1, reads={"a"}, mutated={"a"}, error="ValueError"))
    back = SessionGraph.from_json(g.to_json())
    assert back.cells == g.cells
    assert back.producers("a") == g.producers("a")
    assert set(back.nx_graph.edges) == set(g.nx_graph.edges)

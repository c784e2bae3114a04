"""The migrate-vs-recompute plan: exact, stable, and never unfaithful."""

from __future__ import annotations

import random

from elastic_proxy.inner_agent.graph import CellExecution, SessionGraph
from elastic_proxy.inner_agent.optimizer import NOMINAL_BANDWIDTH, GroupCost, plan

MB = 1_000_000


def cell(index: int, runtime: float = 0.01, **kw) -> CellExecution:
    kw = {k: frozenset(v) if isinstance(v, (set, list)) else v for k, v in kw.items()}
    return CellExecution(index=index, execution_count=index + 1, code="", runtime=runtime, **kw)


def graph_of(*cells: CellExecution) -> SessionGraph:
    g = SessionGraph()
    for c in cells:
        g.add_cell(c)
    return g


def test_cheap_cell_is_recomputed_and_big_load_avoided():
    g = graph_of(cell(0, runtime=0.001, created={"big"}))
    p = plan(g, {"big": GroupCost(frozenset({"big"}), 1000 * MB)})
    assert p.recompute == {"big"} and p.rerun_cells == [0]


def test_slow_cell_is_migrated():
    g = graph_of(cell(0, runtime=60.0, created={"model"}))
    p = plan(g, {"model": GroupCost(frozenset({"model"}), 10 * MB)})
    assert p.migrate == {"model"} and p.rerun_cells == []


def test_tie_goes_to_loading():
    seconds = 5 * MB / NOMINAL_BANDWIDTH
    g = graph_of(cell(0, runtime=seconds, created={"a"}))
    p = plan(g, {"a": GroupCost(frozenset({"a"}), 5 * MB)})
    assert p.migrate == {"a"}


def test_rerun_needs_old_input_versions_rebuilt():
    # b = f(a) read a before a was mutated; rebuilding b needs a's old version, so cell 1 reruns
    # and then a must be rebuilt too (cell 2 mutates it again).
    g = graph_of(
        cell(0, runtime=0.001, created={"a"}),
        cell(1, runtime=0.001, reads={"a"}, created={"b"}),
        cell(2, runtime=0.001, reads={"a"}, mutated={"a"}),
    )
    groups = {
        "a": GroupCost(frozenset({"a"}), 1000 * MB),
        "b": GroupCost(frozenset({"b"}), 1000 * MB),
    }
    p = plan(g, groups)
    assert p.recompute == {"a", "b"}
    assert p.rerun_cells == [0, 1, 2]


def test_rerunning_a_cell_forces_rebuild_of_everything_it_wrote():
    # Cell 0 writes both a (cheap to load) and b (huge): re-running it for b overwrites a,
    # so a must be rebuilt too instead of being loaded then clobbered.
    g = graph_of(cell(0, runtime=0.001, created={"a", "b"}))
    groups = {"a": GroupCost(frozenset({"a"}), 10), "b": GroupCost(frozenset({"b"}), 1000 * MB)}
    p = plan(g, groups)
    assert p.recompute == {"a", "b"}


def test_plan_never_flips():
    # Same recorded facts, any insertion order, any number of runs: the same plan.
    cells = [cell(0, runtime=0.2, created={"x"}, nondeterministic=("random",))]
    cells += [cell(i, runtime=0.1 * i, reads={"x"}, created={f"y{i}"}) for i in range(1, 12)]
    groups = {"x": GroupCost(frozenset({"x"}), 8 * MB)}
    groups.update({f"y{i}": GroupCost(frozenset({f"y{i}"}), i * 4 * MB) for i in range(1, 12)})
    first = plan(graph_of(*cells), groups).to_json()
    rng = random.Random(7)
    for _ in range(30):
        items = list(groups.items())
        rng.shuffle(items)
        assert plan(graph_of(*cells), dict(items)).to_json() == first
    assert plan.__code__.co_argcount == 2, "the plan takes no measured bandwidth"


def test_nondeterministic_cell_never_recomputed():
    g = graph_of(cell(0, runtime=0.0001, created={"r"}, nondeterministic=("numpy.random without seed",)))
    p = plan(g, {"r": GroupCost(frozenset({"r"}), 2000 * MB)})
    assert p.migrate == {"r"} and p.rerun_cells == []


def test_nondeterministic_and_unserializable_is_lost_with_reason():
    g = graph_of(cell(0, created={"gen"}, nondeterministic=("time",)))
    p = plan(g, {"gen": GroupCost(frozenset({"gen"}), 100, serializable=False)})
    assert "gen" in p.lost and "nondeterministic" in p.lost["gen"]
    assert p.rerun_cells == []


def test_unserializable_forces_recompute():
    g = graph_of(cell(0, runtime=100.0, created={"lock"}))
    p = plan(g, {"lock": GroupCost(frozenset({"lock"}), 10, serializable=False)})
    assert p.recompute == {"lock"} and p.rerun_cells == [0]


def test_side_effect_cell_only_when_nothing_else_can_rebuild():
    side = ("file write /tmp/x",)
    # Serializable output: load it, even though re-running would be far cheaper than loading.
    g = graph_of(cell(0, runtime=0.0001, created={"a"}, side_effects=side))
    p = plan(g, {"a": GroupCost(frozenset({"a"}), 5000 * MB)})
    assert p.migrate == {"a"} and p.rerun_cells == [] and p.side_effect_cells == {}
    # Unserializable output: the side-effect cell is the only way, and the plan says so.
    g = graph_of(cell(0, runtime=0.0001, created={"h"}, side_effects=side))
    p = plan(g, {"h": GroupCost(frozenset({"h"}), 10, serializable=False)})
    assert p.rerun_cells == [0]
    assert "side effects" in p.side_effect_cells[0]


def test_destructive_cell_is_never_rerun():
    g = graph_of(cell(0, created={"f"}, destructive=("truncates /tmp/data.txt",)))
    p = plan(g, {"f": GroupCost(frozenset({"f"}), 10, serializable=False)})
    assert p.rerun_cells == [] and "truncates" in p.lost["f"]


def test_failed_cell_is_not_rerun_its_partial_effects_are_loaded():
    g = graph_of(
        cell(0, runtime=0.001, created={"d"}),
        cell(1, runtime=0.001, reads={"d"}, mutated={"d"}, error="ZeroDivisionError"),
    )
    p = plan(g, {"d": GroupCost(frozenset({"d"}), 1000 * MB)})
    assert p.migrate == {"d"} and p.rerun_cells == []


def test_alias_group_is_one_unit():
    g = graph_of(cell(0, runtime=0.001, created={"a"}), cell(1, runtime=0.001, reads={"a"}, created={"b"}))
    p = plan(g, {"a,b": GroupCost(frozenset({"a", "b"}), 1000 * MB)})
    assert p.recompute == {"a,b"} and p.rerun_cells == [0, 1]


def _random_session(rng: random.Random, n_cells: int) -> tuple[SessionGraph, dict[str, GroupCost]]:
    g = SessionGraph()
    names: list[str] = []
    for i in range(n_cells):
        reads = frozenset(rng.sample(names, min(len(names), rng.randint(0, 2))))
        flags = {}
        if rng.random() < 0.15:
            flags["nondeterministic"] = ("random",)
        if rng.random() < 0.15:
            flags["side_effects"] = ("file write",)
        if names and rng.random() < 0.35:
            target = rng.choice(names)
            g.add_cell(cell(i, runtime=rng.random(), reads=reads | {target}, mutated={target}, **flags))
        else:
            names.append(f"v{i}")
            g.add_cell(cell(i, runtime=rng.random(), reads=reads, created={f"v{i}"}, **flags))
    groups = {n: GroupCost(frozenset({n}), rng.randint(0, 400) * MB, serializable=rng.random() > 0.2)
              for n in names}
    return g, groups


def _brute_force_cost(g: SessionGraph, groups: dict[str, GroupCost], lost: set[str]) -> float:
    from itertools import product

    from elastic_proxy.inner_agent.optimizer import (
        SIDE_EFFECT_PENALTY,
        forbidden_reason,
        implication_graph,
        load_seconds,
    )

    implies = implication_graph(g, groups)
    implies.remove_nodes_from([("group", gid) for gid in lost])
    nodes = sorted(implies.nodes)
    best = float("inf")
    for choice in product((False, True), repeat=len(nodes)):
        rebuilt = {node for node, on in zip(nodes, choice) if on}
        if any(x in rebuilt and y not in rebuilt for x, y in implies.edges):
            continue
        cost = 0.0
        for node in nodes:
            if node[0] == "cell":
                if node in rebuilt:
                    if forbidden_reason(g, node[1]) is not None:
                        cost = float("inf")
                        break
                    c = g.cells[node[1]]
                    cost += c.runtime + (SIDE_EFFECT_PENALTY if c.side_effects else 0)
            elif node not in rebuilt:
                group = groups[node[1]]
                if not group.serializable:
                    cost = float("inf")
                    break
                cost += load_seconds(group.size_bytes)
        best = min(best, cost)
    return best


def test_min_cut_matches_brute_force_on_random_sessions():
    rng = random.Random(2024)
    for _ in range(60):
        g, groups = _random_session(rng, rng.randint(1, 6))
        p = plan(g, groups)
        lost_groups = {gid for gid, group in groups.items() if group.names & set(p.lost)}
        expected = _brute_force_cost(g, groups, lost_groups)
        assert abs(p.cost_seconds - expected) < 1e-4 * max(1.0, expected), (p.to_json(), expected)


def test_plan_scales_to_two_thousand_cells():
    import time

    g, groups = _random_session(random.Random(5), 2000)
    started = time.perf_counter()
    plan(g, groups)
    assert time.perf_counter() - started < 10


def test_blocked_cells_are_never_rerun_and_their_reason_comes_first():
    g = graph_of(
        cell(0, runtime=0.001, created={"big"}, nondeterministic=("random",)),
        cell(1, runtime=0.001, reads={"big"}, created={"gen"}),
        cell(2, runtime=0.001, created={"cheap"}),
    )
    groups = {"gen": GroupCost(frozenset({"gen"}), 0, serializable=False),
              "cheap": GroupCost(frozenset({"cheap"}), 1000 * MB)}
    assert plan(g, groups).recompute == {"gen", "cheap"}
    blocked = {0: "its cell [1] makes skipped big", 1: "its cell [2] reads skipped big",
               2: "its cell [3] reads skipped x"}
    p = plan(g, groups, blocked_cells=blocked)
    assert p.lost == {"gen": "not serializable, and its cell [2] reads skipped big"}
    assert p.migrate == {"cheap"} and p.rerun_cells == []

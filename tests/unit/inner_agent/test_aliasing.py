"""Alias groups: who shares mutable state with whom, kept incrementally."""

from __future__ import annotations

import copy
import functools
from typing import Any

import networkx as nx
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_proxy.inner_agent import aliasing
from elastic_proxy.inner_agent.aliasing import AliasGroups, reachable_ids


class Node:
    def __init__(self, payload: Any = None) -> None:
        self.payload = payload


def grouped(groups: AliasGroups) -> list[list[str]]:
    return sorted(sorted(g) for g in groups.groups())


def test_shared_containers_and_plain_rebinding():
    shared = [1, 2]
    ns: dict[str, Any] = {"a": {"k": shared}, "b": {"j": shared}, "c": [1, 2], "n": 5, "s": "text"}
    ns["d"] = ns["c"]
    groups = AliasGroups()
    groups.update(ns)
    assert grouped(groups) == [["a", "b"], ["c", "d"], ["n"], ["s"]]
    assert groups.group_of("a") == {"a", "b"}
    assert groups.group_of("unknown") == {"unknown"}


def test_numpy_views_share_their_base():
    base = np.arange(100)
    left, right = np.split(base, 2)
    ns = {"base": base, "view": base[10:20], "left": left, "right": right, "copy": base.copy(),
          "window": base.reshape(10, 10)[:, 3]}
    groups = AliasGroups()
    groups.update(ns)
    assert groups.group_of("base") == {"base", "view", "left", "right", "window"}
    assert groups.group_of("copy") == {"copy"}


def test_methods_closures_and_attributes():
    values: list[int] = []

    def make() -> Any:
        def remember(x: int) -> None:
            values.append(x)
        return remember

    box = Node(payload=values)
    ns = {"values": values, "push": values.append, "remember": make(), "box": box, "get": box.__init__,
          "partial": functools.partial(print, values), "other": [0]}
    groups = AliasGroups()
    groups.update(ns)
    assert groups.group_of("values") == {"values", "push", "remember", "box", "get", "partial"}
    assert groups.group_of("other") == {"other"}


def test_modules_classes_and_builtins_do_not_link_names():
    ns = {"np1": np, "np2": np, "cls1": Node, "cls2": Node, "p1": print, "p2": print, "t1": (1, "a"),
          "t2": (1, "a")}
    groups = AliasGroups()
    groups.update(ns)
    assert all(len(g) == 1 for g in groups.groups())


def test_module_globals_are_not_walked():
    ns: dict[str, Any] = {"data": [1], "other": [2]}
    exec("def f():\n    return data\n", ns)  # f.__globals__ is ns: it must not link f to everything
    ns["gen"] = (x for x in ns["data"])
    groups = AliasGroups()
    groups.update(ns, ["data", "other", "f", "gen"])
    assert groups.group_of("data") == {"data"}
    assert groups.group_of("f") == {"f"}


def test_rebinding_splits_a_group():
    shared = [0]
    ns: dict[str, Any] = {"a": [shared], "b": {"x": shared}, "c": Node(shared)}
    groups = AliasGroups()
    groups.update(ns)
    assert groups.group_of("a") == {"a", "b", "c"}
    ns["b"] = {"x": [0]}
    groups.update(ns, ["b"])
    assert groups.group_of("a") == {"a", "c"}
    assert groups.group_of("b") == {"b"}
    ns["a"].clear()
    groups.update(ns, ["a"])
    assert grouped(groups) == [["a"], ["b"], ["c"]]


def test_new_sharing_merges_groups():
    ns: dict[str, Any] = {"a": [[1]], "b": [], "c": {}}
    groups = AliasGroups()
    groups.update(ns)
    ns["b"].append(ns["a"][0])
    groups.update(ns, ["b"])
    assert groups.group_of("b") == {"a", "b"}
    ns["c"]["k"] = ns["b"]
    groups.update(ns, ["c"])
    assert groups.group_of("a") == {"a", "b", "c"}


def test_remove_and_names_gone_from_the_namespace():
    shared: list[int] = []
    ns: dict[str, Any] = {"a": [shared], "b": [shared], "c": [shared]}
    groups = AliasGroups()
    groups.update(ns)
    groups.remove("b")
    assert groups.group_of("a") == {"a", "c"}
    assert "b" not in groups
    del ns["c"]
    groups.update(ns, ["c"])
    assert grouped(groups) == [["a"]]
    groups.update(ns, [], removed=["a"])
    assert groups.groups() == []


def test_only_the_named_variables_are_walked(monkeypatch):
    ns = {f"v{i}": [i] for i in range(50)}
    groups = AliasGroups()
    groups.update(ns)
    walked: list[int] = []
    original = aliasing.reachable_ids

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        walked.append(id(obj))
        return original(obj, *args, **kwargs)

    monkeypatch.setattr(aliasing, "reachable_ids", counting)
    ns["v3"] = ns["v7"]
    groups.update(ns, ["v3"])
    assert walked == [id(ns["v3"])]
    assert groups.group_of("v7") == {"v3", "v7"}


def test_large_flat_data_is_cheap_and_holds_no_ids():
    big = list(range(1_000_000))
    table = {f"k{i}": i for i in range(100_000)}
    assert reachable_ids(big)[0] == {id(big)}
    assert reachable_ids(table)[0] == {id(table)}


def test_object_arrays_and_bounded_walks():
    inner = [1]
    holder = np.empty(2, dtype=object)
    holder[0], holder[1] = inner, "x"
    found, complete = reachable_ids(holder)
    assert id(inner) in found and complete
    chain: Any = None
    for _ in range(100):
        chain = Node(chain)
    found, complete = reachable_ids(chain, max_objects=10)
    assert not complete
    groups = AliasGroups(max_objects=10)
    groups.update({"chain": chain})
    assert groups.truncated == {"chain"}


# -- property: groups are exactly the names that share a mutable object ----------------------------

_leaf = st.one_of(st.integers(), st.text(max_size=3), st.none())


def _mutables(root: Any) -> set[int]:
    """Ids of reachable mutable objects, by an independent walk of the test's own structures."""
    found, stack, seen = set(), [root], set()
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (int, str, type(None))):
            continue
        seen.add(id(item))
        if isinstance(item, (list, dict, Node)):
            found.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, Node):
            stack.append(item.payload)
    return found


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_groups_are_the_components_of_sharing(data):
    pool: list[Any] = [[data.draw(_leaf)] for _ in range(4)] + [Node(data.draw(_leaf)), {"k": 1}]
    names = [f"v{i}" for i in range(6)]
    ns: dict[str, Any] = {}
    for name in names:
        picks = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=2))
        shape = data.draw(st.sampled_from(["list", "tuple", "dict", "node", "copy"]))
        members = [pool[i] for i in picks]
        if shape == "list":
            ns[name] = members
        elif shape == "tuple":
            ns[name] = tuple(members)
        elif shape == "dict":
            ns[name] = {str(i): m for i, m in enumerate(members)}
        elif shape == "node":
            ns[name] = Node(members)
        else:
            ns[name] = copy.deepcopy(members)
    groups = AliasGroups()
    order = data.draw(st.permutations(names))
    for name in order:  # one name per "cell", as the recorder does
        groups.update(ns, [name])
    assert grouped(groups) == _components(ns)
    for name in data.draw(st.lists(st.sampled_from(names), max_size=3)):  # later cells rebind names
        ns[name] = copy.deepcopy(ns[name]) if data.draw(st.booleans()) else [pool[0]]
        groups.update(ns, [name])
        assert grouped(groups) == _components(ns)


def _components(ns: dict[str, Any]) -> list[list[str]]:
    reach = {name: _mutables(value) for name, value in ns.items()}
    sharing = nx.Graph()
    sharing.add_nodes_from(ns)
    sharing.add_edges_from((a, b) for a in ns for b in ns if a < b and reach[a] & reach[b])
    return sorted(sorted(c) for c in nx.connected_components(sharing))


def test_walks_stop_at_the_shell_a_comm_or_widget_would_lead_to():
    """The kernel and the shell reach the whole process: nothing a checkpoint can share, and a
    walk through them cost 0.1-0.7 s per cell that touched a Comm."""
    from IPython.core.interactiveshell import InteractiveShell

    from elastic_proxy.inner_agent.fingerprint import inspect
    from elastic_proxy.inner_agent.recorder import estimate_size

    class Holder:
        pass

    holder = Holder()
    holder.shell = InteractiveShell.instance()
    holder.data = [1, 2]
    try:
        found, complete = reachable_ids(holder)
        assert complete and {id(holder), id(holder.data)} <= found <= {id(holder), id(vars(holder)), id(holder.data)}
        print_ = inspect(holder)
        assert print_.opaque and print_.opaque_types == ("IPython.core.interactiveshell.InteractiveShell",)
        assert estimate_size(holder) < 10_000
    finally:
        InteractiveShell.clear_instance()

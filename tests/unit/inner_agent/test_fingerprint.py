"""Fingerprints: mutations anywhere are seen, equal plain data is not reported, and digests are
the same in a new process."""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import os
import random
import subprocess
import sys
import textwrap
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from elastic_proxy.inner_agent.fingerprint import Tracker, fingerprint, inspect

MARK = "Z!"  # never produced by the strategies below (their text uses "abcde")


class Box:
    """A plain object: its state is its __dict__."""

    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


class Slotted:
    __slots__ = ("left", "right")

    def __init__(self, left: Any, right: Any) -> None:
        self.left = left
        self.right = right


# -- strategies -----------------------------------------------------------------------------------

_text = st.text(alphabet="abcde", max_size=5)
_hashable = st.one_of(st.integers(-(10**20), 10**20), _text, st.none(), st.booleans(),
                      st.floats(allow_nan=False))
_arrays = st.builds(
    lambda values, dtype: np.array(values, dtype=dtype),
    st.lists(st.integers(-100, 100), min_size=1, max_size=6),
    st.sampled_from(["int64", "int32", "float64"]),
)
_bulk = st.lists(st.one_of(st.integers(-1000, 1000), _text), min_size=32, max_size=40)  # fast path
_leaves = st.one_of(_hashable, _arrays, _bulk)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_text, children, max_size=5),
        st.tuples(children, children),
        st.builds(lambda attrs: Box(**attrs), st.dictionaries(st.sampled_from(["p", "q", "r"]), children,
                                                              max_size=3)),
        st.builds(Slotted, children, children),
        st.sets(_hashable, max_size=4),
        st.frozensets(_hashable, max_size=4),
    )


structures = st.recursive(_leaves, _containers, max_leaves=20)


def mutable_nodes(root: Any) -> list[Any]:
    """Every mutable object reachable from root, found independently of the code under test."""
    found, seen, stack = [], set(), [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (int, float, str, bytes, type(None))):
            continue
        seen.add(id(item))
        if isinstance(item, (list, dict, set, Box, Slotted, np.ndarray)):
            found.append(item)
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, Box):
            stack.extend(vars(item).values())
        elif isinstance(item, Slotted):
            stack.extend([item.left, item.right])
    return found


def reaches(root: Any, target: Any) -> bool:
    return any(node is target for node in mutable_nodes(root))


def mutate(target: Any, data: st.DataObject) -> None:
    if isinstance(target, list):
        if target and data.draw(st.booleans()):
            target[data.draw(st.integers(0, len(target) - 1))] = MARK
        else:
            target.append(MARK)
    elif isinstance(target, dict):
        if target and data.draw(st.booleans()):
            target[data.draw(st.sampled_from(sorted(target)))] = MARK
        else:
            target[MARK] = 1
    elif isinstance(target, set):
        target.add(MARK)
    elif isinstance(target, Box):
        setattr(target, data.draw(st.sampled_from(["p", "zz"])), MARK)
    elif isinstance(target, Slotted):
        target.right = MARK
    else:
        target.flat[data.draw(st.integers(0, target.size - 1))] += 1


# -- properties ------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_mutation_is_seen_by_exactly_the_names_that_reach_it(data):
    a = data.draw(structures, label="a")
    candidates = mutable_nodes(a)
    assume(candidates)
    target = candidates[data.draw(st.integers(0, len(candidates) - 1), label="target")]
    namespace = {
        "a": a,
        "b": [data.draw(_hashable), target],  # another variable holding an alias
        "c": copy.deepcopy(a),  # equal, shares nothing: must stay unchanged
        "d": data.draw(structures, label="d"),
    }
    tracker = Tracker()
    for name, value in namespace.items():
        assert tracker.update(name, value)  # new names are changes
    via_alias = data.draw(st.booleans(), label="through b")
    mutate(namespace["b"][1] if via_alias else target, data)
    changed = {name for name, value in namespace.items() if tracker.update(name, value)}
    assert changed == {name for name, value in namespace.items() if reaches(value, target)}
    assert {"a", "b"} <= changed


@settings(max_examples=150, deadline=None)
@given(structures)
def test_equal_plain_data_gives_equal_fingerprints(value):
    tracker = Tracker()
    tracker.update("x", value)
    assert not tracker.update("x", value)
    assert not tracker.update("x", copy.deepcopy(value))
    assert not inspect(value).opaque


# -- objects and attributes --------------------------------------------------------------------------


def test_instance_attribute_assignment():
    box = Box(v=1, items=[1, 2])
    before = fingerprint(box)
    box.v = 2
    assert fingerprint(box) != before
    box.v = 1
    assert fingerprint(box) == before


def test_slots_and_unset_slots():
    thing = Slotted(1, 2)
    before = fingerprint(thing)
    thing.right = 3
    assert fingerprint(thing) != before
    del thing.right
    assert fingerprint(thing) not in (before, fingerprint(Slotted(1, 3)))


def test_edit_deep_inside_a_dict_of_arrays():
    state = {"layers": [{"w": np.zeros((50, 50)), "b": np.zeros(50)} for _ in range(3)]}
    before = fingerprint(state)
    state["layers"][2]["w"][49, 7] = 1e-9
    assert fingerprint(state) != before


def test_dataclass_and_custom_getstate():
    @dataclasses.dataclass
    class Point:
        x: int
        tags: list

    class Stateful:
        def __init__(self) -> None:
            self.hidden = [1]

        def __getstate__(self) -> dict:
            return {"hidden": self.hidden}

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state)

    point, stateful = Point(1, []), Stateful()
    before = fingerprint(point), fingerprint(stateful)
    point.tags.append("t")
    stateful.hidden.append(2)
    assert fingerprint(point) != before[0]
    assert fingerprint(stateful) != before[1]


def test_containers_from_collections():
    counts = collections.Counter("abca")
    ordered = collections.OrderedDict(a=1)
    queue = collections.deque([1, 2], maxlen=5)
    groups = collections.defaultdict(list)
    before = [fingerprint(v) for v in (counts, ordered, queue, groups)]
    counts["z"] += 1
    ordered.move_to_end("a", last=False)
    ordered["b"] = 2
    queue.appendleft(0)
    groups["k"].append(1)
    after = [fingerprint(v) for v in (counts, ordered, queue, groups)]
    assert all(b != a for b, a in zip(before, after))


def test_types_are_part_of_the_value():
    class Colour(enum.IntEnum):
        RED = 1

    assert fingerprint(1) != fingerprint(True) != fingerprint(1.0)
    assert fingerprint([1] * 40) != fingerprint([True] + [1] * 39)
    assert fingerprint([1] * 40) != fingerprint([Colour.RED] + [1] * 39)
    assert fingerprint(b"ab") != fingerprint(bytearray(b"ab"))
    assert fingerprint((1, 2)) != fingerprint([1, 2])
    assert fingerprint(2**80) != fingerprint(2**80 + 1)


def test_cycles():
    ring: list[Any] = [1]
    ring.append(ring)
    table: dict[str, Any] = {}
    table["self"] = table
    assert fingerprint(ring) == fingerprint(ring)
    before = fingerprint(table)
    table["x"] = 1
    assert fingerprint(table) != before


def test_deep_structures_do_not_hit_the_recursion_limit():
    head: Any = None
    for value in range(20_000):
        head = Box(value=value, next=head)
    before = fingerprint(head)
    tail = head
    while tail.next is not None:
        tail = tail.next
    tail.value = -1
    assert fingerprint(head) != before


def test_sets_ignore_insertion_order_but_not_content():
    words = [f"w{i}" for i in range(100)]
    assert fingerprint(set(words)) == fingerprint(set(reversed(words)))
    mixed = [1, "a", (2, "b"), None, frozenset({"c"})]
    assert fingerprint(set(mixed)) == fingerprint(set(reversed(mixed)))
    assert fingerprint(set(words)) != fingerprint(set(words[1:]))


def test_big_plain_data_and_one_odd_element():
    values = list(range(1000))
    before = fingerprint(values)
    values[500] = np.int64(500)  # equal, but not a plain int
    assert fingerprint(values) != before
    values[500] = 500
    assert fingerprint(values) == before
    word = "x" * 10
    twin = "".join(["x" * 5, "x" * 5])  # equal, another object: identity must not count
    assert twin is not word
    assert fingerprint([word] * 40) == fingerprint([word] * 39 + [twin])
    records = [{"id": i, "tags": {"x"}} for i in range(40)]  # sets are not plain data
    assert fingerprint(records) == fingerprint(copy.deepcopy(records))


# -- numpy --------------------------------------------------------------------------------------------


def test_array_dtype_shape_and_views():
    assert fingerprint(np.zeros(4, np.int32)) != fingerprint(np.zeros(2, np.int64))
    matrix = np.arange(12.0).reshape(3, 4)
    before = fingerprint(matrix)
    matrix.shape = (4, 3)
    assert fingerprint(matrix) != before
    column = matrix[:, 1]  # not contiguous
    view_before, base_before = fingerprint(column), fingerprint(matrix)
    column[2] = -1
    assert fingerprint(column) != view_before
    assert fingerprint(matrix) != base_before
    assert fingerprint(np.asfortranarray(matrix)) == fingerprint(np.asfortranarray(matrix.copy()))


def test_object_and_structured_arrays():
    holder = np.empty(2, dtype=object)
    holder[0], holder[1] = [1], {"k": 2}
    before = fingerprint(holder)
    holder[0].append(2)
    assert fingerprint(holder) != before
    records = np.zeros(3, dtype=[("a", "i4"), ("b", "f8")])
    before = fingerprint(records)
    records["b"][1] = 2.5
    assert fingerprint(records) != before
    assert fingerprint(np.datetime64("2024-01-01")) != fingerprint(np.datetime64("2024-01-02"))


def test_library_values_are_inspected(tmp_path):
    import datetime
    import decimal
    import pathlib
    import re
    import types

    makers = [
        lambda: datetime.datetime(2024, 1, 1),
        lambda: decimal.Decimal("1.5"),
        lambda: pathlib.Path("/tmp"),
        lambda: re.compile("a+"),
        lambda: types.MappingProxyType({"a": 1}),
        lambda: types.SimpleNamespace(a=1),
        lambda: np.dtype("f4"),
        lambda: np.float32(1),
        lambda: np.matrix([[1, 2]]),
        lambda: range(3),
        lambda: slice(1, 2),
    ]
    for make in makers:
        assert not inspect(make()).opaque, make()
        assert fingerprint(make()) == fingerprint(make())
    assert fingerprint(re.compile("a+")) != fingerprint(re.compile("a*"))
    masked = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    before = fingerprint(masked)
    masked.mask[0] = True
    assert fingerprint(masked) != before
    (tmp_path / "data.bin").write_bytes(bytes(16))
    mapped = np.memmap(tmp_path / "data.bin", dtype="u1", mode="r+")
    before = fingerprint(mapped)
    mapped[3] = 7
    assert fingerprint(mapped) != before
    del mapped


def test_generator_states_are_values():
    rng = np.random.default_rng(1)
    stdlib = random.Random(1)
    before = fingerprint(rng), fingerprint(stdlib)
    rng.random()
    stdlib.random()
    assert (fingerprint(rng), fingerprint(stdlib)) != before
    assert fingerprint(np.random.default_rng(1)) == before[0]
    assert not inspect(rng).opaque


def test_pandas_objects():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    before = fingerprint(frame)
    assert fingerprint(frame.copy()) == before
    frame.loc[1, "b"] = "q"
    assert fingerprint(frame) != before
    renamed = frame.rename(columns={"a": "c"})
    assert fingerprint(renamed) != fingerprint(frame)
    series = pd.Series([[1], [2]])  # lists: pandas cannot hash them, the generic walk does
    before = fingerprint(series)
    series[0].append(5)
    assert fingerprint(series) != before


# -- functions and classes ------------------------------------------------------------------------------


def _notebook(source: str, filename: str = "<cell-1>") -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace


def test_notebook_functions_by_code_defaults_and_closure():
    first = _notebook("def f(x):\n    return x + 1\n")["f"]
    same = _notebook("\n\n\ndef f(x):\n    return x + 1\n", filename="<cell-7>")["f"]
    other = _notebook("def f(x):\n    return x + 2\n")["f"]
    assert fingerprint(first) == fingerprint(same)  # file name and line numbers do not count
    assert fingerprint(first) != fingerprint(other)
    ns = _notebook("""
        def make():
            seen = []
            def remember(x, cache=[]):
                seen.append(x)
                return cache
            return remember
        remember = make()
    """)
    before = fingerprint(ns["remember"])
    ns["remember"](1)
    assert fingerprint(ns["remember"]) != before
    before = fingerprint(ns["remember"])
    ns["remember"](1).append("cached")
    assert fingerprint(ns["remember"]) != before


def test_notebook_class_attributes_are_state_library_classes_are_names():
    ns = _notebook("class Config:\n    items = []\n")
    before = fingerprint(ns["Config"])
    ns["Config"].items.append(1)
    assert fingerprint(ns["Config"]) != before
    assert fingerprint(collections.OrderedDict) == fingerprint(collections.OrderedDict)
    assert not inspect(np).opaque and not inspect(print).opaque


def test_bound_methods_follow_their_object():
    values = [1, 2]
    method = values.append
    box = Box(n=1)
    ns = _notebook("def get(self):\n    return self.n\n")
    bound = ns["get"].__get__(box)
    before = fingerprint(method), fingerprint(bound)
    values.append(3)
    box.n = 2
    assert fingerprint(method) != before[0]
    assert fingerprint(bound) != before[1]


# -- what cannot be inspected ------------------------------------------------------------------------------


def test_uninspectable_objects_always_read_as_changed(tmp_path):
    class Broken:
        def __reduce_ex__(self, protocol: int) -> Any:
            raise RuntimeError("no")

    handle = open(tmp_path / "f.txt", "w")  # noqa: SIM115 - the handle itself is the value under test
    try:
        for value in [(i for i in range(3)), handle, threading.Lock(), Broken(), {"nested": [Broken()]}]:
            result = inspect(value)
            assert result.opaque
            assert result.opaque_types
            assert fingerprint(value) != fingerprint(value)
            tracker = Tracker()
            tracker.update("v", value)
            assert tracker.update("v", value)
    finally:
        handle.close()


def test_tracker_bookkeeping():
    tracker = Tracker()
    assert tracker.update("x", [1])
    assert not tracker.update("x", [1])
    assert "x" in tracker and tracker.names() == {"x"}
    assert tracker.get("x") is not None and tracker.get("x").hex() == fingerprint([1]).hex()
    tracker.forget("x")
    assert "x" not in tracker
    assert tracker.update("x", [1])


# -- stable across processes ---------------------------------------------------------------------------

_CROSS_PROCESS = """
import collections, numpy as np, sys
sys.path.insert(0, {root!r})
from elastic_proxy.inner_agent.fingerprint import fingerprint

class Box:
    def __init__(self, **attrs):
        self.__dict__.update(attrs)

def scale(x, factor=2):
    return x * factor

values = {{
    "words": {{"alpha", "beta", "gamma", "delta"}},
    "nested": {{"k": [frozenset({{"x", "y"}}), ("t", 1.5, None)], "s": {{("a", 1), ("b", 2)}}}},
    "big": list(range(100)) + ["end"],
    "records": {{f"key{{i}}": {{"v": i, "tags": ["p", "q"]}} for i in range(50)}},
    "array": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
    "box": Box(name="n", parts=[Box(v=1), {{"z"}}]),
    "function": scale,
    "counter": collections.Counter("mississippi"),
    "text": "h\\u00e9llo \\ud800",
}}
for name in sorted(values):
    print(name, fingerprint(values[name]).hex())
"""


def test_fingerprints_are_stable_across_processes():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    script = _CROSS_PROCESS.format(root=root)
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              timeout=60, check=True)
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 9


_CLASS_SCRIPT = '''
import sys, cloudpickle, pickle
from elastic_proxy.inner_agent.fingerprint import inspect
if sys.argv[1] == "dump":
    class Point:
        scale = 2
        def __init__(self):
            self.v = 1
        def norm(self):
            return self.v * self.scale
        @property
        def twice(self):
            return 2 * self.v
    prints = [inspect(Point).hex(), inspect(Point()).hex()]
    sys.stdout.buffer.write(cloudpickle.dumps((prints, Point, Point())))
else:
    prints, cls, obj = pickle.loads(sys.stdin.buffer.read())
    print(prints == [inspect(cls).hex(), inspect(obj).hex()], list(vars(cls)) == sorted(vars(cls)))
'''


def test_a_notebook_class_fingerprints_the_same_after_cloudpickle_in_another_process(tmp_path):
    """The restored class has another __dict__ order, unshared name tuples in its methods' code,
    and copyreg's __slotnames__ cache: none of that is a change."""
    script = tmp_path / "classes.py"
    script.write_text(_CLASS_SCRIPT)
    dumped = subprocess.run([sys.executable, str(script), "dump"], capture_output=True, check=True).stdout
    loaded = subprocess.run([sys.executable, str(script), "load"], input=dumped, capture_output=True, check=True)
    assert loaded.stdout.decode().split() == ["True", "False"], loaded


# -- torch ------------------------------------------------------------------------------------------

_TORCH_VALUES = """
import sys
sys.path.insert(0, {root!r})
import torch
from elastic_proxy.inner_agent.fingerprint import inspect
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
opt = torch.optim.Adam(net.parameters(), lr=0.01)
net(torch.randn(5, 3)).sum().backward()
opt.step()
for name, value in [("tensor", torch.randn(3, 4)), ("half", torch.ones(2, dtype=torch.bfloat16)),
                    ("scalar", torch.tensor(3.0)), ("module", net), ("optimizer", opt)]:
    print(name, inspect(value))
"""


def test_torch_values_have_the_same_fingerprint_in_another_process():
    """A torch.save archive names storages by process-local keys: pickled, equal tensors differed."""
    pytest.importorskip("torch", reason="torch is installed by `make coverage-table`, not by `make test`")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    outputs = [subprocess.run([sys.executable, "-c", _TORCH_VALUES.format(root=root)], capture_output=True,
                              text=True, timeout=120, check=True).stdout for _ in range(2)]
    assert outputs[0] == outputs[1]
    assert len(outputs[0].splitlines()) == 5 and "opaque=True" not in outputs[0]


def test_a_tensor_edit_or_gradient_changes_the_fingerprint():
    torch = pytest.importorskip("torch", reason="torch is installed by `make coverage-table`, not by `make test`")
    weight = torch.nn.Parameter(torch.zeros(4, 3))
    before = fingerprint(weight)
    assert fingerprint(weight.detach().clone()) != before  # a Parameter is not a plain tensor
    (weight * 2).sum().backward()
    with_grad = fingerprint(weight)
    assert with_grad != before
    with torch.no_grad():
        weight[1, 2] = 1.0
    assert fingerprint(weight) not in (before, with_grad)


# -- matplotlib -------------------------------------------------------------------------------------

_FIGURE_SCRIPT = """
import pickle, sys
import matplotlib
matplotlib.use("agg")
import cloudpickle
import matplotlib.pyplot as plt
import numpy as np
from elastic_proxy.inner_agent.fingerprint import inspect

def prints(values):
    return [inspect(v).hex() for v in values] + [str(inspect(v).opaque) for v in values]

if sys.argv[1] == "dump":
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(4, 3))
    ax.plot([0, 1, 2, 3], [1, 4, 2, 3], label="line")
    ax.legend()
    image = ax2.imshow(np.ma.masked_less(np.arange(16.0).reshape(4, 4), 3))
    fig.colorbar(image)
    legend_handle = ax2.plot([], [], label="no points")[0]  # an empty array: its strides change when pickled
    values = (fig, ax, ax2, legend_handle)
    sys.stdout.buffer.write(cloudpickle.dumps((prints(values), prints(values), values)))
else:
    first, second, values = pickle.loads(sys.stdin.buffer.read())
    print(first == second, prints(values) == first)
"""


def test_a_figure_fingerprints_the_same_each_time_and_in_another_process(tmp_path):
    """Pickling a figure advances its callback registries' counters, and a new process numbers
    its figures anew: the generic walk saw a different figure on every call."""
    pytest.importorskip("matplotlib")
    script = tmp_path / "figures.py"
    script.write_text(_FIGURE_SCRIPT)
    dumped = subprocess.run([sys.executable, str(script), "dump"], capture_output=True, check=True, timeout=120)
    loaded = subprocess.run([sys.executable, str(script), "load"], input=dumped.stdout, capture_output=True,
                            check=True, timeout=120)
    assert loaded.stdout.decode().split() == ["True", "True"], loaded


@pytest.fixture
def line_figure():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2)
    (line,) = ax.plot([0.0, 1.0, 2.0], [1.0, 3.0, 2.0], label="a")
    ax.set_xlim(0, 2)
    yield fig, ax, ax2, line
    plt.close(fig)


def test_figure_edits_change_the_fingerprint_drawn_or_not(line_figure):
    fig, ax, ax2, line = line_figure
    seen = {fingerprint(fig)}
    edits = [
        lambda: line.set_color("red"),  # only in the pixels
        lambda: line.set_label("b"),  # not drawn: no legend
        lambda: line.set_data([0.0, 1.0, 2.0, 9.0], [1.0, 3.0, 2.0, 5.0]),  # outside the x limits
        lambda: ax.set_title("title"),
        lambda: ax2.set_visible(False),
    ]
    for edit in edits:
        edit()
        now = fingerprint(fig)
        assert now not in seen, edit
        seen.add(now)
        assert fingerprint(fig) == now  # and reading it again changed nothing


def test_an_artist_is_its_figure_and_its_place_in_it(line_figure):
    fig, ax, ax2, line = line_figure
    assert len({fingerprint(fig), fingerprint(ax), fingerprint(ax2), fingerprint(line)}) == 4
    before = fingerprint(ax2)
    line.set_color("red")  # an edit to another part of the same figure
    assert fingerprint(ax2) != before


def test_a_figure_with_much_data_is_not_drawn(line_figure, monkeypatch):
    """Drawing a million points costs seconds per cell: their data stands for them."""
    from elastic_proxy.inner_agent import fingerprint as module

    fig, _ax, ax2, _line = line_figure
    rendered = []
    real_render = module._render
    monkeypatch.setattr(module, "_render", lambda figure: rendered.append(figure) or real_render(figure))
    fingerprint(fig)
    assert rendered == [fig]
    many = np.arange(module.FIGURE_PIXELS_UP_TO_POINTS, dtype=float)
    ax2.scatter(many, many)
    before = fingerprint(fig)
    assert rendered == [fig]
    ax2.collections[0].set_offsets(np.column_stack([many, many + 1]))
    assert fingerprint(fig) != before
    assert rendered == [fig]


def test_names_that_reach_one_figure_draw_it_once_between_two_cells(line_figure, monkeypatch):
    from elastic_proxy.inner_agent import fingerprint as module

    fig, ax, _ax2, line = line_figure
    rendered = []
    real_render = module._render
    monkeypatch.setattr(module, "_render", lambda figure: rendered.append(figure) or real_render(figure))
    with module.at_one_moment():
        inside = [fingerprint(fig), fingerprint(ax)]
    assert rendered == [fig]
    assert [fingerprint(fig), fingerprint(ax)] == inside
    assert rendered == [fig, fig, fig]
    line.set_color("red")
    with module.at_one_moment():
        assert fingerprint(ax) != inside[1]  # a new moment draws anew
    assert len(rendered) == 4

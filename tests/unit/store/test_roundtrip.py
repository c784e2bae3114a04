"""Round trips through a real local store: values, sharing, fallbacks, dedup and chunking."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastic_proxy.store import CHUNK_SIZE, GroupRef, SerializationError, open_store, write_stats

from .conftest import commit_groups, load_all


def test_views_come_back_as_views_of_the_same_memory(store):
    """`b = a[...]` shares a's memory; after a restore, writing through one must show in the other."""
    base = np.arange(600_000, dtype=np.float64)  # several chunks, out of band
    grid = np.arange(24.0).reshape(4, 6)  # itself a view of an unnamed array
    lone = np.arange(1_000_000)[10:13]  # the only user of its base: stays a 3-element copy
    group = {"a": base, "window": base[10:20], "reversed": base[::-3], "grid": grid, "grid_t": grid.T,
             "column": grid[:, 2], "lone": lone}
    commit_groups(store, {"g": group})
    loaded = load_all(store)
    for name, value in group.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    loaded["a"][15] = -1.0
    loaded["a"][-1] = -7.0
    loaded["grid"][1, 2] = 99.0
    assert loaded["window"][5] == -1.0 and loaded["reversed"][0] == -7.0
    assert loaded["grid_t"][2, 1] == 99.0 and loaded["column"][1] == 99.0
    assert loaded["lone"].nbytes == 24 and (loaded["lone"].base is None or loaded["lone"].base.nbytes < 1000)


def test_a_torch_model_and_its_optimizer_come_back_with_gradients_and_shared_parameters(store):
    """torch pickles a Parameter without `.grad`: restored after `loss.backward()`, a model would have none."""
    torch = pytest.importorskip("torch", reason="torch is installed by `make coverage-table`, not by `make test`")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).pow(2).sum().backward()
    opt.step()
    plain = torch.ones(2, requires_grad=True)
    (plain * 3).sum().backward()
    commit_groups(store, {"g": {"model": model, "opt": opt, "plain": plain}})
    loaded = load_all(store)
    for before, after in zip(model.parameters(), loaded["model"].parameters()):
        assert type(after) is torch.nn.Parameter and after.requires_grad
        assert torch.equal(after, before) and torch.equal(after.grad, before.grad)
    assert loaded["opt"].param_groups[0]["params"][0] is loaded["model"].weight
    assert torch.equal(loaded["plain"].grad, torch.full((2,), 3.0)) and loaded["plain"].requires_grad


def test_several_groups_round_trip_with_arrays_and_sharing(store):
    rng = np.random.default_rng(1)
    big = rng.standard_normal(600_000)  # 4.8 MB: several chunks
    shared = [1, 2, 3]
    groups = {
        "g1": {"a": big, "b": [big, "tag"]},
        "g2": {"x": shared, "y": {"k": shared}},
        "g3": {"n": 42, "s": "text", "f": np.float32(1.5), "small": np.arange(10)},
        "g4": {"fortran": np.asfortranarray(rng.standard_normal((300, 400))),
               "strided": rng.standard_normal((500, 400))[::2, ::3]},
    }
    generation = commit_groups(store, groups)
    assert generation == 1
    loaded = load_all(store)
    assert loaded["a"] is loaded["b"][0]
    assert loaded["x"] is loaded["y"]["k"]
    np.testing.assert_array_equal(loaded["a"], big)
    assert loaded["a"].flags.writeable
    assert loaded["b"][1] == "tag" and loaded["n"] == 42 and loaded["s"] == "text"
    assert loaded["f"] == np.float32(1.5) and loaded["small"].tolist() == list(range(10))
    np.testing.assert_array_equal(loaded["fortran"], groups["g4"]["fortran"])
    assert loaded["fortran"].flags.f_contiguous
    np.testing.assert_array_equal(loaded["strided"], groups["g4"]["strided"])


def test_group_ref_is_json_and_describes_the_chunks(store):
    array = np.arange(3 * CHUNK_SIZE // 8 + 10, dtype=np.int64)
    ref = store.put_group({"a": array})
    data = ref.to_json()
    assert GroupRef.from_json(data) == ref
    assert data["size"] == ref.size >= array.nbytes
    assert data["names"] == ["a"] and data["pickler"] == "cloudpickle"
    [buffer] = data["buffers"]
    assert buffer["size"] == array.nbytes and len(buffer["chunks"]) == 4


def test_object_cloudpickle_cannot_handle_is_pickled_with_dill(store):
    lock = threading.Lock()
    ref = store.put_group({"lock": lock, "n": 1})
    assert ref.pickler == "dill"
    loaded = store.load_group(ref)
    assert loaded["n"] == 1 and hasattr(loaded["lock"], "acquire")


def test_unpicklable_variable_is_named_and_other_groups_still_commit(store):
    def numbers():
        yield 1

    gen = numbers()
    with pytest.raises(SerializationError) as info:
        store.put_group({"gen": gen, "ok": 1})
    assert info.value.names == ("gen",)
    message = str(info.value)
    assert "'gen'" in message and "generator" in message and "cloudpickle" in message and "dill" in message
    assert "cloudpickle: TypeError: cannot pickle 'generator' object" in message, message
    generation = commit_groups(store, {"g1": {"x": np.arange(5)}, "g2": {"y": "fine"}})
    assert generation == 1
    loaded = load_all(store)
    assert loaded["y"] == "fine" and loaded["x"].tolist() == [0, 1, 2, 3, 4]


def test_unchanged_group_writes_no_new_blob(store):
    group = {"a": np.random.default_rng(2).standard_normal(400_000), "meta": {"k": [1, 2]}}
    store.put_group(group)
    before = write_stats.snapshot()
    store.put_group(group)
    delta = write_stats.since(before)
    assert delta.blobs_written == 0 and delta.blob_bytes_written == 0
    assert delta.blobs_skipped >= 2


def test_unchanged_group_from_a_new_process_store_checks_the_disk_not_memory(root):
    group = {"a": np.arange(300_000)}
    open_store("s", root=root).put_group(group)
    before = write_stats.snapshot()
    open_store("s", root=root).put_group(group)  # fresh Store: empty known set
    assert write_stats.since(before).blobs_written == 0


def test_one_element_edit_of_50mb_array_writes_about_one_chunk(store):
    array = np.random.default_rng(3).standard_normal(50 * CHUNK_SIZE // 8)
    store.put_group({"a": array})
    array[len(array) // 2] += 1.0
    before = write_stats.snapshot()
    ref = store.put_group({"a": array})
    delta = write_stats.since(before)
    assert delta.blobs_written <= 2
    assert delta.blob_bytes_written <= 2 * CHUNK_SIZE + 4096
    np.testing.assert_array_equal(store.load_group(ref)["a"], array)


def test_identical_chunks_in_one_group_are_written_once(store):
    before = write_stats.snapshot()
    store.put_group({"zeros": np.zeros(8 * CHUNK_SIZE, dtype=np.uint8)})
    delta = write_stats.since(before)
    assert delta.blobs_written == 2  # the stream and one all-zero chunk
    assert delta.blobs_skipped == 7


def test_load_reports_progress_bytes(store):
    array = np.arange(5 * CHUNK_SIZE // 8, dtype=np.int64)
    ref = store.put_group({"a": array})
    seen: list[int] = []
    store.load_group(ref, on_bytes=seen.append)
    assert sum(seen) == ref.size and len(seen) == 6


def test_commit_numbers_generations_and_parents(store):
    assert store.latest() is None
    first = commit_groups(store, {"g": {"v": 1}}, execution_count=1)
    second = commit_groups(store, {"g": {"v": 2}}, execution_count=2)
    assert (first, second) == (1, 2)
    latest = store.latest()
    assert latest.generation == 2 and latest.parent == 1 and latest["execution_count"] == 2
    assert latest.body == {"groups": latest["groups"], "execution_count": 2}
    assert load_all(store, 1)["v"] == 1 and load_all(store)["v"] == 2
    assert [m.generation for m in store.generations()] == [2, 1]


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: (st.lists(children) | st.dictionaries(st.text(), children)
                      | st.tuples(children, children) | st.frozensets(st.integers())),
    max_leaves=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values)
def test_arbitrary_nested_values_round_trip(store, value):
    ref = store.put_group({"v": value, "again": value})
    loaded = store.load_group(GroupRef.from_json(ref.to_json()))
    assert loaded["v"] == value
    assert loaded["again"] is loaded["v"] or not isinstance(value, (list, dict))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nbytes=st.integers(0, 400_000), dtype=st.sampled_from(["u1", "<i4", "<f8", ">i2", "c16"]),
       seed=st.integers(0, 2**32 - 1))
def test_arrays_of_any_size_cross_chunk_boundaries(root, nbytes, dtype, seed):
    small_chunks = open_store("chunks", root=root, chunk_size=100_000)
    itemsize = np.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, nbytes - nbytes % itemsize, dtype=np.uint8)
    array = raw.view(dtype)
    loaded = small_chunks.load_group(small_chunks.put_group({"a": array}))["a"]
    assert loaded.dtype == array.dtype
    assert loaded.tobytes() == array.tobytes()


def test_raw_pickle_buffer_comes_back_as_a_pickle_buffer(store):
    import pickle

    data = bytearray(range(256)) * 400
    loaded = store.load_group(store.put_group({"pb": pickle.PickleBuffer(data)}))["pb"]
    assert isinstance(loaded, pickle.PickleBuffer) and bytes(loaded.raw()) == bytes(data)

"""Permissions, session keys, retention (gc), forget and the session list."""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

from elastic_proxy.store import StoreError, list_sessions, open_store, write_stats
from elastic_proxy.store.paths import default_root, resolve_root, session_key

from .conftest import commit_groups, load_all


def modes(root: str) -> tuple[set[int], set[int]]:
    dirs, files = {stat.S_IMODE(os.stat(root).st_mode)}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirs.update(stat.S_IMODE(os.stat(os.path.join(dirpath, d)).st_mode) for d in dirnames)
        files.update(stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) for f in filenames)
    return dirs, files


def test_dirs_are_0700_and_files_0600_whatever_the_umask(root, secret_file):
    old = os.umask(0o000)
    try:
        store = open_store("nb", root=root)
        commit_groups(store, {"g": {"a": np.arange(300_000)}})
    finally:
        os.umask(old)
    assert modes(root) == ({0o700}, {0o600})
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(secret_file.parent).st_mode) == 0o700
    assert len(secret_file.read_bytes()) == 32


def test_secret_is_made_once_and_a_readable_one_is_refused(root, secret_file):
    commit_groups(open_store("nb", root=root), {"g": {"a": 1}})
    first = secret_file.read_bytes()
    assert load_all(open_store("nb", root=root))["a"] == 1
    assert secret_file.read_bytes() == first
    os.chmod(secret_file, 0o644)
    from elastic_proxy.store import secret as secret_module

    secret_module._cache.clear()
    with pytest.raises(StoreError, match="chmod 600"):
        open_store("nb", root=root)


@pytest.mark.parametrize("name", ["../../etc/passwd", "notebooks/a.ipynb", "..", "", "ünïcødé 📓.ipynb",
                                  "a" * 500, "C:\\Users\\x\\nb.ipynb", ".hidden"])
def test_session_key_is_one_safe_path_component(name):
    key = session_key(name)
    assert "/" not in key and "\\" not in key and not key.startswith(".") and key not in ("", "blobs")
    assert len(key) <= 60 and key.isascii()
    assert key == session_key(name) and key != session_key(name + "x")


def test_root_comes_from_argument_then_env_then_jupyter_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("ELASTIC_PROXY_STORE", raising=False)
    assert resolve_root(None) == default_root()
    assert default_root().endswith(os.path.join("elastic-proxy", "sessions"))
    monkeypatch.setenv("ELASTIC_PROXY_STORE", "memory://somewhere")
    assert resolve_root(None) == "memory://somewhere"
    assert resolve_root(str(tmp_path)) == str(tmp_path)


def six_generations(store):
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal(200_000) for _ in range(6)]
    for index, array in enumerate(arrays):
        commit_groups(store, {"g": {"a": array, "i": index}})
    return arrays


def blob_names(root: str) -> set[str]:
    return {name for _d, _s, files in os.walk(os.path.join(root, "blobs")) for name in files}


def test_gc_keeps_the_last_n_and_deletes_unreferenced_blobs(root):
    store = open_store("nb", root=root, grace_seconds=0)
    arrays = six_generations(store)
    before = len(blob_names(root))
    report = store.gc(keep_last=2)
    assert report.kept == [6, 5] and report.manifests_deleted == 4
    assert [m.generation for m in store.generations()] == [6, 5]
    assert report.blobs_deleted > 0 and len(blob_names(root)) == before - report.blobs_deleted
    for generation in (5, 6):
        manifest = store.read_manifest(generation)
        assert store.verify(manifest) == []
        np.testing.assert_array_equal(load_all(store, generation)["a"], arrays[generation - 1])


def test_gc_never_deletes_young_blobs(root):
    store = open_store("nb", root=root)  # default grace: ten minutes
    six_generations(store)
    before = blob_names(root)
    report = store.gc(keep_last=1)
    assert report.manifests_deleted == 5 and report.blobs_deleted == 0 and blob_names(root) == before


def test_gc_keeps_blobs_another_session_references(root):
    shared = np.random.default_rng(9).standard_normal(300_000)
    other = open_store("other notebook", root=root, grace_seconds=0)
    commit_groups(other, {"g": {"shared": shared}})
    mine = open_store("nb", root=root, grace_seconds=0)
    before = write_stats.snapshot()
    commit_groups(mine, {"g": {"shared": shared}})
    assert write_stats.since(before).blobs_written == 0  # shared across sessions
    commit_groups(mine, {"g": {"v": "new"}})
    mine.gc(keep_last=1)
    mine.forget()
    np.testing.assert_array_equal(load_all(other)["shared"], shared)
    assert open_store("nb", root=root).latest() is None


def test_gc_newest_valid_is_always_kept_and_max_bytes_drops_older(root):
    store = open_store("nb", root=root, grace_seconds=0)
    six_generations(store)  # each generation ~1.6 MB of its own
    report = store.gc(keep_last=0)
    assert report.kept == [6]
    store = open_store("nb2", root=root, grace_seconds=0)
    six_generations(store)
    report = store.gc(keep_last=10, max_bytes=4_000_000)
    assert report.kept == [6, 5]
    assert store.gc(keep_last=10, max_bytes=1).kept == [6]


def test_blob_deleted_by_gc_is_written_again_when_needed(root):
    store = open_store("nb", root=root, grace_seconds=0)
    group = {"a": np.random.default_rng(4).standard_normal(300_000)}
    commit_groups(store, {"g": group})
    commit_groups(store, {"g": {"other": 1}})
    assert store.gc(keep_last=1).blobs_deleted >= 3
    before = write_stats.snapshot()
    commit_groups(store, {"g": group})
    assert write_stats.since(before).blobs_written >= 3
    np.testing.assert_array_equal(load_all(store)["a"], group["a"])


def test_reusing_an_existing_blob_restarts_its_grace_period(root):
    group = {"a": np.random.default_rng(6).standard_normal(300_000)}
    open_store("nb", root=root).put_group(group)  # written, never committed
    old = time.time() - 3600
    for dirpath, _dirs, files in os.walk(os.path.join(root, "blobs")):
        for name in files:
            os.utime(os.path.join(dirpath, name), (old, old))
    open_store("nb", root=root).put_group(group)  # a new writer reuses the blobs
    report = open_store("nb", root=root, grace_seconds=600).gc()
    assert report.blobs_deleted == 0


def test_stale_temp_files_are_removed_by_gc(root):
    store = open_store("nb", root=root, grace_seconds=60)
    commit_groups(store, {"g": {"a": 1}})
    shard = os.path.join(root, "blobs", "ab")
    os.makedirs(shard, exist_ok=True)
    stale, fresh = os.path.join(shard, ".tmp-stale"), os.path.join(shard, ".tmp-fresh")
    for path in (stale, fresh):
        with open(path, "wb") as f:
            f.write(b"partial")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert store.gc().temps_deleted == 1
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_list_sessions_and_forget(root):
    first = open_store("notebooks/one.ipynb", root=root, grace_seconds=0)
    second = open_store("notebooks/two.ipynb", root=root, grace_seconds=0)
    commit_groups(first, {"g": {"a": np.arange(200_000)}})
    commit_groups(first, {"g": {"a": 2}})
    commit_groups(second, {"g": {"b": 3}})
    listed = {info.name: info for info in list_sessions(root)}
    assert set(listed) == {"notebooks/one.ipynb", "notebooks/two.ipynb"}
    assert listed["notebooks/one.ipynb"].generations == 2 and listed["notebooks/one.ipynb"].newest == 2
    assert listed["notebooks/one.ipynb"].key == first.key and first.sessions() == list_sessions(root)
    report = first.forget()
    assert report.blobs_deleted >= 2
    assert [info.name for info in list_sessions(root)] == ["notebooks/two.ipynb"]
    assert first.latest() is None and load_all(second)["b"] == 3
    assert commit_groups(first, {"g": {"again": 1}}) == 1  # a forgotten session starts over

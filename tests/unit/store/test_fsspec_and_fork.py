"""The same store on fsspec's memory:// filesystem, and writes from a forked child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import fsspec
import numpy as np

from elastic_proxy.store import list_sessions, open_store, write_stats
from elastic_proxy.store.manifest import TAMPERED

from .conftest import commit_groups, load_all


def test_memory_filesystem_round_trip(memory_root):
    store = open_store("notebooks/remote.ipynb", root=memory_root, grace_seconds=0)
    array = np.random.default_rng(7).standard_normal(400_000)
    shared = {"k": [1, 2]}
    commit_groups(store, {"g1": {"a": array, "b": [array]}, "g2": {"s": shared, "t": shared}})
    loaded = load_all(store)
    np.testing.assert_array_equal(loaded["a"], array)
    assert loaded["a"] is loaded["b"][0] and loaded["s"] is loaded["t"]
    before = write_stats.snapshot()
    store.put_group({"a": array, "b": [array]})
    assert write_stats.since(before).blobs_written == 0
    assert store.verify(store.latest()) == []
    assert [info.name for info in list_sessions(memory_root)] == ["notebooks/remote.ipynb"]


def test_memory_filesystem_is_put_once_and_detects_tampering(memory_root):
    store = open_store("nb", root=memory_root, grace_seconds=0)
    commit_groups(store, {"g": {"v": 1}})
    commit_groups(store, {"g": {"v": 2}})
    fs, _ = fsspec.core.url_to_fs(memory_root)
    newest = store.latest()
    doc = json.loads(fs.cat_file(newest.path))
    doc["execution_count"] = 99
    fs.pipe_file(newest.path, json.dumps(doc).encode())
    assert store.generations()[0].problem == TAMPERED
    assert load_all(store)["v"] == 1
    assert store.gc(keep_last=1).kept == [1]
    store.forget()
    assert store.latest() is None and list_sessions(memory_root) == []
    assert not [p for p in fs.find(fs._strip_protocol(memory_root)) if "/blobs/" in p]


FORKED_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from elastic_proxy.store import open_store, write_stats

    store = open_store("forked", root=sys.argv[1])
    big = np.random.default_rng(1).standard_normal(2_000_000)
    store.commit({"groups": {"g": store.put_group({"big": big}).to_json()}})  # parent used blake3 threads
    big[5] = -1.0
    pid = os.fork()
    if pid == 0:
        store.after_fork()
        ref = store.put_group({"big": big, "n": 2})
        store.commit({"groups": {"g": ref.to_json()}})
        print("child wrote", write_stats.blobs_written, flush=True)
        os._exit(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            print("child status", status, flush=True)
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("child hung", flush=True)
""")


def test_a_forked_child_writes_and_commits(root):
    result = subprocess.run([sys.executable, "-c", FORKED_WRITER, root], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["child wrote 2", "child status 0"], result.stdout  # one chunk and the stream
    store = open_store("forked", root=root)
    assert store.latest().generation == 2
    loaded = load_all(store)
    assert loaded["n"] == 2 and loaded["big"][5] == -1.0


CONCURRENT_WRITER = textwrap.dedent("""
    import sys
    import time
    import numpy as np
    from elastic_proxy.store import open_store

    store = open_store("busy", root=sys.argv[1], grace_seconds=float(sys.argv[2]))
    rng = np.random.default_rng(0)
    old = {"old": rng.standard_normal(200_000)}
    for index in range(40):
        groups = {"new": store.put_group({"new": rng.standard_normal(150_000), "i": index}).to_json()}
        if index % 5 == 4:  # bring back a group that gc may just have found unreferenced
            groups["old"] = store.put_group(old).to_json()
        store.commit({"groups": groups})
        time.sleep(0.12)
    print("done", flush=True)
""")


def test_gc_running_while_another_process_writes_never_breaks_a_generation(root):
    grace = 1.0
    writer = subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, root, str(grace)],
                              stdout=subprocess.PIPE, text=True)
    collector = open_store("busy", root=root, grace_seconds=grace)
    rounds = deleted = 0
    try:
        deadline = time.monotonic() + 90
        while writer.poll() is None and time.monotonic() < deadline:
            deleted += collector.gc(keep_last=2).blobs_deleted
            rounds += 1
            time.sleep(0.05)
        assert writer.wait(timeout=30) == 0 and writer.stdout.read().strip() == "done"
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    assert rounds > 3 and deleted > 10  # gc really collected while the writer wrote
    remaining = [m for m in collector.generations() if m.valid]
    assert remaining and remaining[0].generation == 40
    for manifest in remaining:
        assert collector.verify(manifest) == [], manifest.generation
    assert load_all(collector)["i"] == 39


GONE_STORE_WRITER = textwrap.dedent("""
    import os, shutil, sys, time
    from elastic_proxy.store import open_store
    from elastic_proxy.store.errors import StoreGoneError

    root, report, kernel_ends = sys.argv[1], sys.argv[2], sys.argv[3] == "kernel-ends"
    store = open_store("gone", root=root, grace_seconds=0)
    store.commit({"groups": {"g": store.put_group({"v": 1}).to_json()}})
    go, ready = os.pipe()
    forked, forked_w = os.pipe()
    if os.fork() == 0:  # the checkpoint writer
        os.close(ready)
        store.after_fork()
        os.write(forked_w, b"x")
        kernel = os.getppid()
        if not os.read(go, 1):  # a byte: go on beside the kernel; end of file: the kernel is ending
            while os.getppid() == kernel:  # ended once the writer is handed to another parent
                time.sleep(0.01)
        try:
            store.commit({"groups": {"g": store.put_group({"v": 2}).to_json()}})
            outcome = "written"
        except StoreGoneError as err:
            outcome = f"abandoned: {err}"
        with open(report, "w") as f:
            f.write(outcome)
        os._exit(0)
    os.read(forked, 1)
    shutil.rmtree(root)  # what a pipeline does with its temporary store once the kernel is shut down
    if not kernel_ends:
        os.write(ready, b"x")
        os.wait()
""")


def _gone_store_write(tmp_path, how: str) -> str:
    root, report = tmp_path / "store", tmp_path / "report"
    subprocess.run([sys.executable, "-c", GONE_STORE_WRITER, str(root), str(report), how], check=True, timeout=120)
    deadline = time.monotonic() + 30
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return report.read_text()


def test_a_writer_that_outlived_its_kernel_does_not_bring_back_a_deleted_store(tmp_path):
    outcome = _gone_store_write(tmp_path, "kernel-ends")
    assert outcome.startswith("abandoned: the checkpoint store"), outcome
    assert not (tmp_path / "store").exists()


def test_a_live_kernels_writer_makes_a_deleted_store_again(tmp_path):
    """The kernel still holds the state: its checkpoints must go on."""
    assert _gone_store_write(tmp_path, "kernel-lives") == "written"
    assert open_store("gone", root=str(tmp_path / "store")).latest().generation == 1

"""Checkpointer against a real store on disk: forked writes, one in flight, coalescing, per-group failures."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from elastic_proxy.inner_agent.checkpointer import Checkpointer, State, prefer_fork
from elastic_proxy.inner_agent.graph import CellExecution
from elastic_proxy.store import StoreFullError, open_store

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class PidProbe:
    """Pickling it records which process pickled it, and can be made slow."""

    def __init__(self, path: str, delay: float = 0.0) -> None:
        self.path, self.delay = path, delay

    def __reduce__(self):
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(self.delay)
        return (PidProbe, (self.path, 0.0))


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(tmp_path / "secret"))
    return open_store("unit/checkpointer", str(tmp_path / "store"))


def make(store, ns: dict, inline_limit: int = 0, published: list | None = None) -> Checkpointer:
    def describe():
        groups = {name: (name,) for name in sorted(ns)}
        body = {
            "cells": [],
            "variables": {n: {"group": n, "fingerprint": "", "type": type(v).__name__, "size": 0}
                          for n, v in ns.items()},
            "execution_count": len(ns),
        }
        return State(groups, body, {name: 10**9 for name in ns})

    return Checkpointer(store, lambda: ns, describe, publish=None if published is None else published.append,
                        inline_limit=inline_limit)


def cell(count: int, *written: str) -> CellExecution:
    return CellExecution(index=count - 1, execution_count=count, code="", created=frozenset(written))


def test_fork_path_really_forks_and_commits(store, tmp_path):
    probe_file = str(tmp_path / "pids")
    ns = {"a": np.arange(1000), "probe": PidProbe(probe_file)}
    published: list = []
    cp = make(store, ns, published=published)
    cp.on_cell(cell(1, "a", "probe"))
    assert cp.wait(timeout=30)
    assert cp.forks == 1
    pids = {int(line) for line in Path(probe_file).read_text().split()}
    assert pids and os.getpid() not in pids
    latest = store.latest()
    assert latest.generation == cp.last.generation
    assert set(latest.groups()) == {"a", "probe"}
    np.testing.assert_array_equal(store.load_group(latest.groups()["a"])["a"], ns["a"])
    assert published == [{"generation": latest.generation, "cell": 2, "bytes": cp.last.bytes,
                          "seconds": round(cp.last.seconds, 6)}]


def test_one_writer_at_a_time_and_a_follower_holds_the_newest_cell(store, tmp_path):
    """While a slow snapshot writes, each later cell boundary is held by one waiting follower
    (a newer cell replaces it), so a kernel killed meanwhile loses nothing; writers commit in turn."""
    ns = {"slow": PidProbe(str(tmp_path / "pids"), delay=1.0)}
    cp = make(store, ns)
    started = time.perf_counter()
    cp.on_cell(cell(1, "slow"))
    assert time.perf_counter() - started < 0.5, "the parent must not wait for the forked writer"
    assert cp.busy
    ns["x"] = np.ones(10)
    cp.on_cell(cell(2, "x"))
    assert cp.forks == 2, "cell 2's boundary is not held by a follower"
    ns["y"] = np.zeros(10)
    started = time.perf_counter()
    cp.on_cell(cell(3, "y"))
    assert time.perf_counter() - started < 0.5, "replacing a waiting follower must not block the cell"
    assert cp.forks == 3, "cell 3's boundary is not held by a follower"
    assert cp.status()["pending_names"] == [], "changes were left only in the kernel's memory"
    assert cp.wait(timeout=30)
    generations = [m for m in store.generations() if m.valid]
    assert len(generations) == 2, "the replaced follower must never commit"
    assert set(generations[0].groups()) == {"slow", "x", "y"}
    assert set(generations[1].groups()) == {"slow"}
    assert generations[0].groups()["slow"] == generations[1].groups()["slow"]
    pickled_by = (tmp_path / "pids").read_text().split()
    assert len(pickled_by) == 1, "the follower pickled again what the writer ahead of it had committed"


def test_unserializable_group_never_sinks_the_checkpoint(store):
    def gen():
        yield 1

    ns = {"arr": np.arange(5), "g": gen(), "sock_like": threading.Lock(), "n": 3}
    cp = make(store, ns, inline_limit=1 << 40)
    cp.on_cell(cell(1, *ns))
    assert cp.wait(timeout=30)
    assert cp.forks == 0, "small changes are written inline"
    latest = store.latest()
    refs = latest.groups()
    assert refs["g"] is None
    assert refs["arr"] is not None and refs["n"] is not None
    assert "recompute_only" in latest.body["variables"]["g"]
    assert "recompute_only" not in latest.body["variables"]["arr"]
    assert "g" in cp.status()["unserializable"]


class FullStore:
    """The real store, except that the disk fills up at commit."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def commit(self, body):
        raise StoreFullError("the checkpoint store is full (No space left on device)")


@pytest.mark.parametrize("inline_limit", [0, 1 << 40], ids=["forked", "inline"])
def test_failure_is_reported_and_changes_are_kept_for_the_next_try(store, inline_limit):
    ns = {"a": np.arange(10)}
    cp = make(FullStore(store), ns, inline_limit=inline_limit)
    cp.on_cell(cell(1, "a"))
    cp.wait(timeout=0) if inline_limit else cp._idle.wait(30)
    cp.poll()
    status = cp.status()
    assert status["last_error"].startswith("disk full:")
    assert status["last_generation"] is None
    cp.store = store
    assert cp.wait(timeout=30)
    assert cp.status()["last_error"] is None
    assert set(store.latest().groups()) == {"a"}


LOAD_BOTH = """
import sys
from elastic_proxy.store import open_store
store = open_store("unit/checkpointer", sys.argv[1])
refs = store.latest().groups()
cls = store.load_group(refs["Point"])["Point"]
obj = store.load_group(refs["p"])["p"]
print(type(obj) is cls, obj.v)
"""


def test_notebook_class_and_instance_from_different_forked_writers_stay_one_class(store, tmp_path):
    ns: dict = {"__name__": "__main__"}
    exec("class Point:\n    def __init__(self):\n        self.v = 1\n", ns)
    del ns["__name__"]
    cp = make(store, ns)
    cp.on_cell(cell(1, "Point"))
    assert cp.wait(timeout=30)
    exec("p = Point()\np.v = 2", ns)
    cp.on_cell(cell(2, "p"))
    assert cp.wait(timeout=30)
    assert cp.forks == 2
    out = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(tmp_path / "store")], capture_output=True,
                         text=True, check=True, env=dict(os.environ))
    assert out.stdout.split() == ["True", "2"], out


def test_fork_is_chosen_when_its_pause_is_smaller_than_an_inline_write():
    gib, mib = 1 << 30, 1 << 20
    assert not prefer_fork(estimated_bytes=100, resident_bytes=200 * mib)  # a fork's fixed cost is more
    assert prefer_fork(estimated_bytes=50 * mib, resident_bytes=200 * mib)
    assert not prefer_fork(estimated_bytes=100, resident_bytes=20 * gib)
    assert prefer_fork(estimated_bytes=gib, resident_bytes=20 * gib)


@pytest.mark.parametrize("inline_limit", [0, 1 << 30], ids=["forked writes", "inline writes"])
def test_retention_runs_in_a_forked_process_every_gc_every_commits(store, monkeypatch, inline_limit):
    """Never in the user's process, and never as a write in flight that later cells would queue behind."""
    import elastic_proxy.inner_agent.checkpointer as module

    monkeypatch.setattr(module, "GC_EVERY", 2)
    monkeypatch.setattr(module, "GC_KEEP_LAST", 1)
    ns: dict = {}
    cp = make(store, ns, inline_limit=inline_limit)
    for count in range(1, 5):
        ns[f"v{count}"] = np.full(10, count)
        cp.on_cell(cell(count, f"v{count}"))
        assert cp.wait(timeout=30)
    assert not cp.busy
    assert cp.forks == (4 if inline_limit == 0 else 0) + 2  # the writes, and two retention passes
    deadline = time.monotonic() + 30
    while [m.generation for m in store.generations()] != [4] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [m.generation for m in store.generations()] == [4]


def test_a_hung_writer_is_killed_and_its_changes_retried(store, tmp_path):
    ns = {"slow": PidProbe(str(tmp_path / "pids"), delay=60.0)}
    cp = make(store, ns)
    cp.writer_timeout = 0.5
    cp.on_cell(cell(1, "slow"))
    time.sleep(0.7)
    cp.poll()
    assert cp._idle.wait(10), "the hung writer was not killed"
    ns["slow"] = PidProbe(str(tmp_path / "pids"))
    cp.poll()
    assert "killed by signal 9" in (cp.status()["last_error"] or "")
    assert cp.wait(timeout=30)
    assert set(store.latest().groups()) == {"slow"}

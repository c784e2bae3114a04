"""Side effects recorded from real audit events: real files, processes, sockets and databases."""

from __future__ import annotations

import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest

from elastic_proxy.inner_agent.sideeffects import AuditRecorder, CellEffects, default_ignored_prefixes


def record(action, ignore=(), seeded=()) -> CellEffects:
    recorder = AuditRecorder(ignore_prefixes=ignore)
    recorder.start()
    try:
        action()
    finally:
        effects = recorder.stop(seeded=seeded)
    return effects


def test_reads_are_not_effects(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    effects = record(lambda: path.read_text())
    assert not effects.any
    assert effects.reasons == [] and effects.destructive == ()


def test_new_file_is_a_write_not_destruction(tmp_path):
    path = tmp_path / "new.txt"
    effects = record(lambda: path.write_text("x"))
    assert effects.writes == {os.path.realpath(path)}
    assert effects.truncated == set()
    assert effects.destructive == ()
    assert effects.side_effects


def test_overwriting_truncating_appending(tmp_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("precious")
    log = tmp_path / "log.txt"
    log.write_text("")

    def cell() -> None:
        with open(existing, "w") as handle:
            handle.write("gone")
        with open(log, "a") as handle:
            handle.write("line")

    effects = record(cell)
    assert effects.writes == {os.path.realpath(existing), os.path.realpath(log)}
    assert effects.truncated == {os.path.realpath(existing)}
    assert len(effects.destructive) == 1 and "existing.txt" in effects.destructive[0]

    effects = record(lambda: os.truncate(log, 0))
    assert effects.truncated == {os.path.realpath(log)}


def test_low_level_open_flags(tmp_path):
    path = tmp_path / "raw.bin"
    effects = record(lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT)))
    assert effects.writes == {os.path.realpath(path)}
    effects = record(lambda: os.close(os.open(path, os.O_RDONLY)))
    assert not effects.writes


def test_deletes_renames_trees(tmp_path):
    victim, source, target, tree = (tmp_path / n for n in ("victim", "source", "target", "tree"))
    for path in (victim, source, target):
        path.write_text("x")
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("x")

    def cell() -> None:
        os.remove(victim)
        os.replace(source, target)
        shutil.rmtree(tree)

    effects = record(cell)
    real = os.path.realpath
    assert {real(victim), real(source), real(tree)} <= effects.deletes
    assert real(target) in effects.truncated
    assert len(effects.destructive) >= 4


def test_temporary_files_made_and_removed_by_the_cell_destroy_nothing(tmp_path):
    def cell() -> None:
        with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
            path = os.path.join(scratch, "part.bin")
            with open(path, "wb") as handle:
                handle.write(b"x")
            with open(path, "wb") as handle:  # rewritten by the same cell
                handle.write(b"y")
        made = tmp_path / "made.txt"
        made.write_text("x")
        made.unlink()

    effects = record(cell)
    assert effects.deletes and effects.writes
    assert effects.destructive == ()
    assert effects.truncated == set()


def test_subprocesses_name_the_program_only(tmp_path):
    effects = record(lambda: subprocess.run([sys.executable, "-c", "pass", "--password=hunter2"], check=True))
    assert effects.subprocess
    assert not any("hunter2" in r for r in effects.reasons)
    assert any(os.path.basename(sys.executable) in r for r in effects.reasons)
    assert record(lambda: os.system("true")).subprocess


def test_network_connections_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def cell() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

    try:
        effects = record(cell)
    finally:
        server.close()
    assert effects.network
    assert any(f"127.0.0.1:{port}" in r for r in effects.reasons)


def test_urls_are_reduced_to_their_host():
    effects = record(lambda: sys.audit("urllib.Request", "https://user:pw@example.org/x?token=s3cret", None,
                                       {}, "GET"))
    assert effects.network
    assert effects.reasons == ["network: request to example.org"]


def test_sqlite_files_but_not_memory(tmp_path):
    database = tmp_path / "db.sqlite"

    def cell() -> None:
        sqlite3.connect(database).close()
        sqlite3.connect(":memory:").close()

    effects = record(cell)
    assert effects.writes == {os.path.realpath(database)}


def test_ignored_prefixes_and_bytecode_caches(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    cache = tmp_path / "pkg" / "__pycache__"
    cache.mkdir(parents=True)

    def cell() -> None:
        (store / "blob").write_text("x")
        (cache / "mod.cpython.pyc").write_bytes(b"x")

    effects = record(cell, ignore=[str(store)])
    assert not effects.writes
    assert any("elastic-proxy" in p for p in default_ignored_prefixes())


def test_events_from_threads_count(tmp_path):
    path = tmp_path / "threaded.txt"

    def cell() -> None:
        worker = threading.Thread(target=path.write_text, args=("x",))
        worker.start()
        worker.join()

    assert record(cell).writes == {os.path.realpath(path)}


def test_nothing_is_recorded_outside_a_cell(tmp_path):
    recorder = AuditRecorder()
    recorder.start()
    effects = recorder.stop()
    (tmp_path / "after.txt").write_text("x")
    assert not effects.writes
    assert AuditRecorder._active is None


def test_the_hook_never_raises_into_user_code():
    effects = record(lambda: sys.audit("open", object(), "w", 0))
    assert not effects.writes
    effects = record(lambda: sys.audit("os.rename", None))
    assert not effects.deletes


# -- randomness ------------------------------------------------------------------------------------


def test_unseeded_global_random_is_nondeterministic():
    effects = record(lambda: random.random())
    assert effects.nondeterministic
    assert effects.rng_consumed == {"random"}


def test_seeded_in_the_cell_is_reproducible():
    def cell() -> None:
        random.seed(3)
        random.random()

    effects = record(cell, seeded={"random"})
    assert effects.rng_consumed == {"random"}
    assert effects.nondeterministic == ()


def test_numpy_global_generator():
    effects = record(lambda: np.random.rand(2))
    assert "numpy.random" in effects.rng_consumed
    assert effects.nondeterministic
    assert not record(lambda: np.random.default_rng(0).random()).rng_consumed


def test_cells_without_randomness_are_deterministic(tmp_path):
    effects = record(lambda: sum(range(1000)))
    assert effects.nondeterministic == ()
    assert not effects.rng_consumed


@pytest.mark.parametrize("mode", ["x", "r+"])
def test_other_write_modes(tmp_path, mode):
    path = tmp_path / f"file-{mode.replace('+', 'plus')}"
    if mode == "r+":
        path.write_text("x")
    effects = record(lambda: open(path, mode).close())
    assert effects.writes == {os.path.realpath(path)}
    assert effects.truncated == set()

"""A restore waits for a checkpoint writer that outlived its kernel, and only for as long as it writes."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

from elastic_proxy.inner_agent.writer_lock import wait_for_writers

WRITER = """
import sys, time
from types import SimpleNamespace
from elastic_proxy.inner_agent.writer_lock import hold_while_writing
hold_while_writing(SimpleNamespace(root=sys.argv[1], session=sys.argv[2]))
print("holding", flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_restore_waits_for_a_writer_then_goes_on(tmp_path):
    store = SimpleNamespace(root=str(tmp_path), session="nb.ipynb")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "1.0"],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "holding\n"
    waited = wait_for_writers(store, timeout=30)
    writer.wait()
    assert 0.5 < waited < 10


def test_a_killed_writer_releases_the_lock(tmp_path):
    store = SimpleNamespace(root=str(tmp_path), session="nb.ipynb")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "60"],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "holding\n"
    writer.kill()
    writer.wait()
    start = time.monotonic()
    wait_for_writers(store, timeout=30)
    assert time.monotonic() - start < 1


def test_the_wait_is_bounded_and_other_sessions_do_not_wait(tmp_path):
    store = SimpleNamespace(root=str(tmp_path), session="nb.ipynb")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "holding\n"
        assert wait_for_writers(SimpleNamespace(root=str(tmp_path), session="other.ipynb"), timeout=5) < 0.5
        assert 0.4 < wait_for_writers(store, timeout=0.5) < 3
    finally:
        writer.kill()
        writer.wait()


def test_a_writer_still_waiting_for_the_lock_is_waited_for_too(tmp_path):
    """Two writers in a row (a follower behind a snapshot): a restore must wait for both, even if it
    could take the lock in the instant between them."""
    store = SimpleNamespace(root=str(tmp_path), session="nb.ipynb")
    first = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "1.0"],
                             stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "holding\n"
    follower = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "1.5"],
                                stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)  # announced, blocked behind the first
    start = time.monotonic()
    wait_for_writers(store, timeout=30)
    waited = time.monotonic() - start
    assert follower.poll() is not None or waited > 1.5, "the restore did not wait for the follower"
    first.wait()
    follower.wait()


def test_a_long_wait_says_it_is_alive(tmp_path):
    """Every `every` seconds of waiting the caller hears of it (the agent turns that into progress
    messages, which keep the supervisor from taking the restoring kernel for a hung one)."""
    store = SimpleNamespace(root=str(tmp_path), session="nb.ipynb")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store.root, store.session, "1.6"],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "holding\n"
    heard: list[float] = []
    wait_for_writers(store, timeout=30, on_wait=heard.append, every=0.3)
    writer.wait()
    assert len(heard) >= 3 and heard == sorted(heard), heard

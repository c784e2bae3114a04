"""A writer SIGKILLed mid-write and a really full disk: the previous generation stays good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from elastic_proxy.store import StoreFullError, open_store

from .conftest import commit_groups, load_all

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from elastic_proxy.store import open_store

    store = open_store("crash", root=sys.argv[1])
    store.commit({"groups": {"g": store.put_group({"x": np.arange(1000), "tag": "good"}).to_json()}})
    print("committed-1", flush=True)
    big = np.arange(50_000_000, dtype=np.int64)  # 400 MB of distinct chunks
    print("writing", flush=True)
    store.commit({"groups": {"g": store.put_group({"x": big, "tag": "big"}).to_json()}})
    print("committed-2", flush=True)
""")


def count_files(directory: str) -> tuple[int, int]:
    blobs = temps = 0
    for _dirpath, _dirs, files in os.walk(directory):
        for name in files:
            if name.startswith(".tmp-"):
                temps += 1
            else:
                blobs += 1
    return blobs, temps


def test_sigkill_during_a_write_keeps_the_previous_generation(root):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, root], stdout=subprocess.PIPE, text=True,
                              env=os.environ.copy())
    try:
        assert writer.stdout.readline().strip() == "committed-1"
        assert writer.stdout.readline().strip() == "writing"
        blobs_dir = os.path.join(root, "blobs")
        baseline, _ = count_files(blobs_dir)
        deadline = time.monotonic() + 60
        while count_files(blobs_dir)[1] < 20:  # 20 chunks of the big group written, not yet renamed
            assert writer.poll() is None, "writer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
        assert writer.stdout.read() == ""  # it never reached committed-2
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    blobs, temps = count_files(os.path.join(root, "blobs"))
    assert blobs == baseline and temps >= 20  # killed mid-write: no chunk of it is visible as a blob
    store = open_store("crash", root=root, grace_seconds=0)
    assert [m.generation for m in store.generations()] == [1]
    latest = store.latest()
    assert latest.generation == 1 and store.verify(latest) == []
    loaded = load_all(store)
    assert loaded["tag"] == "good" and loaded["x"].tolist() == list(range(1000))
    assert commit_groups(store, {"g": {"tag": "after"}}) == 2
    report = store.gc(keep_last=5)
    assert count_files(os.path.join(root, "blobs"))[1] == 0
    assert report.temps_deleted >= 20  # the dead writer's temp files
    assert load_all(store)["tag"] == "after" and load_all(store, 1)["tag"] == "good"


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 2 MiB tmpfs: writes fail with ENOSPC for real."""
    mountpoint = tmp_path / f"tiny-{uuid.uuid4().hex[:8]}"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root, mount allowed): {result.stderr.strip()}")
    yield str(mountpoint)
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_full_disk_raises_store_full_and_keeps_previous_generation(tiny_disk):
    root = os.path.join(tiny_disk, "store")
    store = open_store("full", root=root)
    small = np.arange(20_000)  # 160 kB
    commit_groups(store, {"g": {"a": small}})
    with pytest.raises(StoreFullError) as info:
        store.put_group({"a": np.random.default_rng(0).standard_normal(500_000)})  # 4 MB
    message = str(info.value)
    assert "full" in message and "ELASTIC_PROXY_STORE" in message and root in message
    assert count_files(root)[1] == 0  # no temp file left behind
    assert store.latest().generation == 1 and store.verify(store.latest()) == []
    np.testing.assert_array_equal(load_all(store)["a"], small)


def test_full_disk_while_writing_the_manifest(tiny_disk):
    root = os.path.join(tiny_disk, "store")
    store = open_store("full", root=root)
    commit_groups(store, {"g": {"a": 1}})
    ref = store.put_group({"b": 2}).to_json()
    filler = os.path.join(tiny_disk, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space"):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(StoreFullError):
        store.commit({"groups": {"g": ref}, "padding": "x" * 200_000})
    assert count_files(root)[1] == 0
    assert [m.generation for m in store.generations()] == [1]
    assert load_all(store)["a"] == 1

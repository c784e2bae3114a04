"""Loading a group on several reader threads: same bytes back, and a bad chunk anywhere (any thread,
any batch) still stops the load before anything is unpickled, with no reader thread left behind."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from elastic_proxy.store import IntegrityError, Store, chunk_reader

from .objects import Marker

CHUNK = 4096


@pytest.fixture
def small_chunks(root, monkeypatch) -> Store:
    """4 KiB chunks and 4 readers, so a 400 KB group is a hundred chunks in 4 batches on 4 threads."""
    monkeypatch.setattr(chunk_reader, "default_workers", lambda: 4)
    return Store("parallel", root=root, chunk_size=CHUNK)


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("elastic-proxy-read")]


def group_with_marker(store: Store, tmp_path):
    rng = np.random.default_rng(3)
    objs = {"m": Marker(str(tmp_path / "marker")), "a": rng.standard_normal(30_001),
            "b": rng.integers(0, 1 << 40, 17_777), "c": np.arange(CHUNK // 8 * 3)}
    return objs, store.put_group(objs)


def blob_file(store: Store, address: str) -> str:
    return os.path.join(store.root, "blobs", address[:2], address)


def test_many_batches_round_trip_and_report_every_chunk_in_the_calling_thread(small_chunks, tmp_path):
    objs, ref = group_with_marker(small_chunks, tmp_path)
    assert len(chunk_reader.batches([(a, memoryview(bytearray(s))) for a, s in list(ref.blobs())[1:]], 4)) >= 4
    callers: set[int] = set()
    seen: list[int] = []

    def on_bytes(count: int) -> None:
        callers.add(threading.get_ident())
        seen.append(count)

    loaded = small_chunks.load_group(ref, on_bytes=on_bytes)
    for name in "abc":
        np.testing.assert_array_equal(loaded[name], objs[name])
        assert loaded[name].flags.writeable
    assert loaded["m"] == str(tmp_path / "marker")
    assert callers == {threading.get_ident()}
    assert sum(seen) == ref.size and len(seen) == sum(1 for _ in ref.blobs())
    assert reader_threads() == []


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_flipped_byte_in_any_batch_is_refused_before_unpickling(small_chunks, tmp_path, which):
    _, ref = group_with_marker(small_chunks, tmp_path)
    chunks = [address for buffer in ref.buffers for address in buffer.chunks]
    address = {"first": chunks[0], "middle": chunks[len(chunks) // 2], "last": chunks[-1]}[which]
    with open(blob_file(small_chunks, address), "r+b") as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(IntegrityError, match=address):
        small_chunks.load_group(ref)
    assert not (tmp_path / "marker").exists()
    assert reader_threads() == []


def test_truncated_and_missing_chunks_in_the_last_batch_are_refused(small_chunks, tmp_path):
    _, ref = group_with_marker(small_chunks, tmp_path)
    last = ref.buffers[-1].chunks[-1]
    before_last = ref.buffers[-1].chunks[-2]
    os.truncate(blob_file(small_chunks, before_last), 10)
    with pytest.raises(IntegrityError, match="truncated"):
        small_chunks.load_group(ref)
    os.unlink(blob_file(small_chunks, last))
    os.unlink(blob_file(small_chunks, before_last))
    with pytest.raises(IntegrityError, match="missing blob"):
        small_chunks.load_group(ref)
    assert not (tmp_path / "marker").exists()
    assert reader_threads() == []


def test_batches_cover_every_job_in_order_and_give_each_worker_work():
    jobs = [(f"{i:064x}", memoryview(bytearray(100 + i % 7))) for i in range(50)]
    for workers in (1, 2, 3, 8):
        runs = chunk_reader.batches(jobs, workers, batch_bytes=1000)
        assert [job for run in runs for job in run] == jobs
        assert all(run for run in runs)
        assert len(runs) >= min(workers, len(jobs))
        assert all(sum(len(v) for _, v in run[:-1]) < 1000 for run in runs)
    assert chunk_reader.batches([], 2) == []
    assert len(chunk_reader.batches(jobs[:1], 4)) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_cancels_batches_not_started_and_waits_for_running_ones(workers):
    views = memoryview(np.empty(100 << 20, dtype=np.uint8))  # 100 jobs of 1 MiB: 7 batches of 16
    jobs = [(f"{i:064x}", views[i << 20:(i + 1) << 20]) for i in range(100)]
    started: list[str] = []
    finished: list[str] = []

    def read_one(address: str, view: memoryview) -> None:
        started.append(address)
        if address == jobs[0][0]:
            raise IntegrityError(f"blob {address}: content does not match its hash (corrupted)")
        time.sleep(0.01)
        finished.append(address)

    with pytest.raises(IntegrityError, match=jobs[0][0]):
        chunk_reader.read_verified(jobs, read_one, workers=workers)
    assert len(started) < len(jobs)
    assert len(finished) == len(started) - 1  # every batch that started had ended when it raised
    assert reader_threads() == []

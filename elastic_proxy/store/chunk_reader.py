"""Filling a group's out-of-band buffers: each chunk read straight into its final place and checked
against its address, on a few threads.

Why threads: a restore is a copy of every byte (from the page cache or the network) plus a blake3
of every byte. Both release the GIL, so on two cores two readers take about half the time of one,
which is what can bring a verified restore level with a plain `pickle.load` (whose CPU time it
exceeds by the hash: bench/store_bench.py). Each reader hashes a chunk right after reading it,
while it is still in the CPU cache, so the hash does not read it from memory again.

Why a pool per call: its threads have ended when the call returns, so none is alive when the agent
later forks a writer (a thread does not survive fork; a pool that thinks it still has one hangs).
blake3's own multithreading would use Rayon's global pool, which has the same problem for ever.

Nothing here unpickles: the caller hands the buffers to pickle only after this returned without
raising, that is, after every chunk matched its address.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable

Job = tuple[str, memoryview]  # (blob address, the part of a buffer its bytes go to)
ReadOne = Callable[[str, memoryview], None]  # reads one blob into the view; raises if it does not match

MAX_WORKERS = 4
# A batch is the unit handed to a thread and reported to on_bytes: big enough that the pool's
# overhead is noise, small enough that two threads share a 128 MiB array evenly.
BATCH_BYTES = 16 << 20


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))


def batches(jobs: Sequence[Job], workers: int, batch_bytes: int = BATCH_BYTES) -> list[list[Job]]:
    """Consecutive jobs in runs of about `batch_bytes`, fewer bytes if that leaves a thread idle."""
    total = sum(len(view) for _, view in jobs)
    target = max(1, min(batch_bytes, -(-total // max(1, workers))))
    runs: list[list[Job]] = []
    size = target
    for job in jobs:
        if size >= target:
            runs.append([])
            size = 0
        runs[-1].append(job)
        size += len(job[1])
    return runs


def read_verified(jobs: Sequence[Job], read_one: ReadOne, on_bytes: Callable[[int], None] | None = None,
                  workers: int | None = None) -> None:
    """read_one every job; returns once all are read and verified, else raises the first error.

    on_bytes(n) runs in the calling thread, once per chunk, as its batch ends. After an error the
    batches not yet started are cancelled and the running ones are waited for, so no thread still
    writes into the buffers when this raises.
    """
    workers = workers or default_workers()
    runs = batches(jobs, workers)
    if workers == 1 or len(runs) <= 1:
        for run in runs:
            _read_run(read_one, run)
            _report(run, on_bytes)
        return
    with ThreadPoolExecutor(min(len(runs), workers), thread_name_prefix="elastic-proxy-read") as pool:
        pending = {pool.submit(_read_run, read_one, run): run for run in runs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
                    _report(pending.pop(future), on_bytes)
        finally:
            for future in pending:
                future.cancel()


def _read_run(read_one: ReadOne, run: list[Job]) -> None:
    for address, view in run:
        read_one(address, view)


def _report(run: list[Job], on_bytes: Callable[[int], None] | None) -> None:
    if on_bytes:
        for _, view in run:
            on_bytes(len(view))

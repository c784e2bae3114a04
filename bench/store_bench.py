"""Benchmark of the checkpoint store against baselines measured in the same run, on the same disk.

Prints a markdown table:
- bytes written when one element of a large array changes, vs pickling the whole array again
  (what a whole-object store such as Kishu writes);
- throughput of checkpointing fresh arrays (pickle, hash, write, fsync, commit), vs
  `dd if=/dev/zero bs=1M conv=fdatasync` of the same size into the same directory; in-process and
  from a forked child, as the agent's writer runs;
- restore (read, verify every hash, unpickle) vs `pickle.load` of the same arrays pickled with
  protocol 5 into one file on the same disk, in alternating pairs with the page cache in the same
  state (warm: both were just written; --cold: dropped before each).

Usage: python bench/store_bench.py [--size-mb 1024] [--edit-mb 200] [--repeat 2] [--restore-repeat 6]
       [--dir DIR] [--cold]
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from elastic_proxy.store import CHUNK_SIZE, open_store, write_stats
from elastic_proxy.store.chunk_reader import default_workers

MiB = 1 << 20
ARRAYS = 8


def fresh_arrays(total_mb: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_array = total_mb * MiB // ARRAYS // 8
    return {f"a{i}": rng.standard_normal(per_array) for i in range(ARRAYS)}


@contextmanager
def fresh_dir(parent: str, name: str) -> Iterator[str]:
    path = os.path.join(parent, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def drop_caches(cold: bool) -> None:
    os.sync()
    if cold:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def checkpoint(root: str, arrays: dict[str, np.ndarray]) -> float:
    """Seconds to put every array as its own group and commit, fsyncs included."""
    store = open_store("bench", root=root)
    start = time.perf_counter()
    refs = {name: store.put_group({name: array}).to_json() for name, array in arrays.items()}
    store.commit({"groups": refs})
    return time.perf_counter() - start


def checkpoint_in_fork(root: str, arrays: dict[str, np.ndarray]) -> float:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.write(write_end, repr(checkpoint(root, arrays)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        seconds = float(pipe.read())
    os.waitpid(pid, 0)
    return seconds


def dd_seconds(directory: str, size_mb: int) -> float:
    target = os.path.join(directory, "dd.out")
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mb}", "conv=fdatasync",
                    "status=none"], check=True)
    seconds = time.perf_counter() - start
    os.unlink(target)
    return seconds


def measure_edit(parent: str, edit_mb: int) -> tuple[int, int, float]:
    array = np.random.default_rng(1).standard_normal(edit_mb * MiB // 8)
    whole = len(pickle.dumps(array, protocol=5))
    with fresh_dir(parent, "edit") as root:
        store = open_store("bench", root=root)
        store.commit({"groups": {"g": store.put_group({"a": array}).to_json()}})
        array[len(array) // 3] += 1.0
        before = write_stats.snapshot()
        start = time.perf_counter()
        store.commit({"groups": {"g": store.put_group({"a": array}).to_json()}})
        seconds = time.perf_counter() - start
        written = write_stats.since(before).bytes_written
    return written, whole, seconds


def measure_write(parent: str, arrays: dict[str, np.ndarray], size_mb: int, repeat: int,
                  in_fork: bool) -> tuple[float, float]:
    store_times, dd_times = [], []
    for _ in range(repeat):
        with fresh_dir(parent, "write") as root:
            drop_caches(False)
            dd_times.append(dd_seconds(root, size_mb))
            drop_caches(False)
            store_times.append((checkpoint_in_fork if in_fork else checkpoint)(root, arrays))
    return min(store_times), min(dd_times)


def measure_restore(parent: str, arrays: dict[str, np.ndarray], repeat: int,
                    cold: bool) -> tuple[tuple[float, float], tuple[float, float], list[float]]:
    """(wall, CPU) seconds of the best restore and of the best pickle.load, and the ratio of each
    pair run back to back. CPU seconds are the process's, threads included: on a busy machine
    they show how much of a gap is work and how much is waiting for a core.

    The two alternate which goes first, so neither always finds the memory the other just freed
    or runs while the other's writeback is still going; each starts after the same sync. Warm: every
    file of both is read once first, so both are wholly in the page cache whatever memory pressure
    did since they were written; --cold: the page cache is dropped before each."""
    with fresh_dir(parent, "restore") as root:
        checkpoint(root, arrays)
        pickle_file = os.path.join(root, "baseline.pkl")
        with open(pickle_file, "wb") as f:
            pickle.dump(arrays, f, protocol=5)
            f.flush()
            os.fsync(f.fileno())
        store = open_store("bench", root=root)
        if not cold:
            read_every_file(root)

        def load_pickle() -> tuple[float, float]:
            drop_caches(cold)
            start, cpu = time.perf_counter(), cpu_seconds()
            with open(pickle_file, "rb") as f:
                baseline = pickle.load(f)
            seconds = time.perf_counter() - start, cpu_seconds() - cpu
            assert all(np.array_equal(baseline[k], arrays[k]) for k in arrays)
            return seconds

        def load_store() -> tuple[float, float]:
            drop_caches(cold)
            start, cpu = time.perf_counter(), cpu_seconds()
            loaded = {}
            for ref in store.latest().groups().values():
                loaded.update(store.load_group(ref))
            seconds = time.perf_counter() - start, cpu_seconds() - cpu
            assert all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
            return seconds

        store_times, pickle_times = [], []
        for run in range(repeat):
            if run % 2:
                store_times.append(load_store())
                pickle_times.append(load_pickle())
            else:
                pickle_times.append(load_pickle())
                store_times.append(load_store())
    pairs = [s[0] / p[0] for s, p in zip(store_times, pickle_times)]
    return min(store_times), min(pickle_times), pairs


def read_every_file(root: str) -> None:
    for directory, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(directory, name), "rb", buffering=0) as f:
                while f.read(MiB):
                    pass


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="data checkpointed and restored (MB)")
    parser.add_argument("--edit-mb", type=int, default=None, help="array with one edited element (MB)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure; the best is kept")
    parser.add_argument("--restore-repeat", type=int, default=6,
                        help="restore and pickle.load pairs (cheap, and the noisiest figure)")
    parser.add_argument("--dir", default=None, help="directory on the disk to test (default: a temp dir)")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each restore (root)")
    args = parser.parse_args(argv)
    edit_mb = args.edit_mb or min(200, args.size_mb)
    parent = tempfile.mkdtemp(prefix="store-bench-", dir=args.dir)
    os.environ.setdefault("ELASTIC_PROXY_SECRET_FILE", os.path.join(parent, "secret"))
    try:
        written, whole, edit_seconds = measure_edit(parent, edit_mb)
        arrays = fresh_arrays(args.size_mb, seed=2)
        size = sum(a.nbytes for a in arrays.values())
        write, dd = measure_write(parent, arrays, args.size_mb, args.repeat, in_fork=False)
        fork_write, fork_dd = measure_write(parent, arrays, args.size_mb, args.repeat, in_fork=True)
        (restore, restore_cpu), (baseline, baseline_cpu), pairs = measure_restore(
            parent, arrays, args.restore_repeat, args.cold)
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    mb = size / 1e6
    cache = "cold page cache" if args.cold else "warm page cache"
    rows = [
        (f"bytes written, one element of a {edit_mb} MB array changed",
         f"{written / 1e6:.2f} MB in {edit_seconds * 1000:.0f} ms", f"whole pickle {whole / 1e6:.0f} MB",
         f"{written / whole:.4f}", "<= 2 MB"),
        (f"checkpoint {mb:.0f} MB of fresh arrays (in process)", f"{mb / write:.0f} MB/s ({write:.2f} s)",
         f"dd conv=fdatasync {mb / dd:.0f} MB/s ({dd:.2f} s)", f"{dd / write:.2f}", ">= 0.5"),
        (f"checkpoint {mb:.0f} MB of fresh arrays (forked child)",
         f"{mb / fork_write:.0f} MB/s ({fork_write:.2f} s)",
         f"dd conv=fdatasync {mb / fork_dd:.0f} MB/s ({fork_dd:.2f} s)", f"{fork_dd / fork_write:.2f}",
         ">= 0.5"),
        (f"restore {mb:.0f} MB, every hash verified ({cache})", f"{restore:.2f} s ({restore_cpu:.2f} CPU-s)",
         f"pickle.load {baseline:.2f} s ({baseline_cpu:.2f} CPU-s)",
         f"{restore / baseline:.2f} (pairs {min(pairs):.2f}-{max(pairs):.2f}, median {statistics.median(pairs):.2f})",
         "<= 1.3"),
    ]
    print(f"Store benchmark: {ARRAYS} float64 arrays, {CHUNK_SIZE // MiB} MiB chunks, best of {args.repeat} "
          f"({args.restore_repeat} for restore), {default_workers()} restore readers, "
          f"Python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs\n")
    print("| measure | elastic-proxy store | baseline (same run) | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

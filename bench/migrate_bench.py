"""A session's state moving to another host through S3: restore on "host B" vs the raw download.

Starts moto's standalone S3 server on loopback (tests/s3_server.py), checkpoints about 500 MB
(`--size-mb`) of random float64 arrays from "host A" (the store in this process, its blob cache
in host A's Jupyter data dir), then, each in a fresh process with its own HOME and Jupyter data
dir (an empty blob cache):

- restore on host B: list the manifests, verify the newest one's signature, read every blob
  from S3 (the store's read-ahead), check every blake3 hash, unpickle;
- the baseline: plain s3fs `cat` of the very same blob objects from the same server, in the same
  run (moto is slow, ~40 MB/s up and ~120 MB/s down on an idle machine: the raw transfer is
  the honest baseline); target restore <= 1.3x the raw download;
- a restore on host A, whose blob cache holds every blob (a kernel that died on its own host);
- a restore from a store on the local disk (no S3 at all), for scale.

Then one element of one array changes and a second checkpoint is written: the bytes it uploads.
Runs alternate (raw, restore B, ...) `--repeat` times; the table gives the medians.

    .venv/bin/python bench/migrate_bench.py [--size-mb 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3_server import MotoServer, client_env, make_bucket  # noqa: E402

BUCKET = "bench"
SESSION = "work/migrate.ipynb"
ARRAY_MB = 100


def host_env(base: Path, name: str, endpoint: str, secret_file: Path) -> dict[str, str]:
    home = base / name
    (home / "data").mkdir(parents=True, exist_ok=True)
    return {**os.environ, **client_env(endpoint), "HOME": str(home), "JUPYTER_DATA_DIR": str(home / "data"),
            "ELASTIC_PROXY_SECRET_FILE": str(secret_file), "AWS_CONFIG_FILE": str(home / "aws-config")}


def in_process(env: dict[str, str], role: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--role", role, *args], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def role_restore(root: str) -> dict[str, Any]:
    """Restore the newest generation (everything a kernel's restore reads), in this process."""
    import s3fs  # noqa: F401  (imported before the clock starts, as the baseline's is)
    import xxhash

    from elastic_proxy.store import open_store

    started = time.perf_counter()
    store = open_store(SESSION, root)
    manifest = store.latest()
    digest = xxhash.xxh3_64()
    total = 0
    for ref in manifest.groups().values():
        for name, value in sorted(store.load_group(ref).items()):
            digest.update(name.encode())
            digest.update(memoryview(value).cast("B"))
            total += value.nbytes
    seconds = time.perf_counter() - started
    backend = store._backend
    hits = getattr(getattr(backend, "cache", None), "hits", 0)
    return {"seconds": seconds, "bytes": total, "digest": digest.hexdigest(), "cache_hits": hits}


def role_raw(paths_file: str) -> dict[str, Any]:
    """Plain s3fs: `cat` of the same objects, fresh client (credentials and endpoint from the env)."""
    import s3fs

    paths = json.loads(Path(paths_file).read_text())
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    started = time.perf_counter()
    data = fs.cat(paths)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": sum(len(v) for v in data.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--role", choices=["restore", "raw"])
    parser.add_argument("arg", nargs="?")
    args = parser.parse_args()
    if args.role == "restore":
        print(json.dumps(role_restore(args.arg)))
        return
    if args.role == "raw":
        print(json.dumps(role_raw(args.arg)))
        return
    run(args.size_mb, args.repeat)


def run(size_mb: int, repeat: int) -> None:
    import numpy as np

    server = MotoServer().start()
    base = Path(tempfile.mkdtemp(prefix="migrate-bench-"))
    secret_file = base / "secret"
    secret_file.write_bytes(os.urandom(32))
    secret_file.chmod(0o600)
    try:
        make_bucket(server.endpoint, BUCKET)
        url = f"s3://{BUCKET}/sessions"
        env_a = host_env(base, "host-a", server.endpoint, secret_file)
        saved = dict(os.environ)
        os.environ.update(env_a)
        from elastic_proxy.store import open_store, write_stats

        rng = np.random.default_rng()
        arrays = {f"a{i}": rng.random(ARRAY_MB * 2**20 // 8) for i in range(max(1, size_mb // ARRAY_MB))}
        nbytes = sum(a.nbytes for a in arrays.values())
        store = open_store(SESSION, url)
        started = time.perf_counter()
        refs = {name: store.put_group({name: value}) for name, value in arrays.items()}
        store.commit({"groups": {n: r.to_json() for n, r in refs.items()}, "variables": {}})
        upload_seconds = time.perf_counter() - started
        paths = [store._blob_path(address) for ref in refs.values() for address, _ in ref.blobs()]
        paths_file = base / "paths.json"
        paths_file.write_text(json.dumps(paths))

        local_root = str(base / "local-store")
        local = open_store(SESSION, local_root)
        local_refs = {name: local.put_group({name: value}) for name, value in arrays.items()}
        local.commit({"groups": {n: r.to_json() for n, r in local_refs.items()}, "variables": {}})
        os.environ.clear()
        os.environ.update(saved)

        raw, host_b, host_a, on_disk = [], [], [], []
        for attempt in range(repeat):
            env_b = host_env(base, f"host-b{attempt}", server.endpoint, secret_file)
            raw.append(in_process(env_b, "raw", str(paths_file)))
            host_b.append(in_process(env_b, "restore", url))
            host_a.append(in_process(env_a, "restore", url))
            on_disk.append(in_process(env_a, "restore", local_root))
        digests = {r["digest"] for r in host_b + host_a + on_disk}
        assert len(digests) == 1, "restores disagree"
        assert all(r["cache_hits"] == 0 for r in host_b) and all(r["cache_hits"] > 0 for r in host_a)

        os.environ.update(env_a)
        first = next(iter(arrays))
        arrays[first][12345] = -1.0
        before = write_stats.snapshot()
        ref = store.put_group({first: arrays[first]})
        store.commit({"groups": {**{n: r.to_json() for n, r in refs.items()}, first: ref.to_json()},
                      "variables": {}})
        second = write_stats.since(before)
        os.environ.clear()
        os.environ.update(saved)
        report(nbytes, upload_seconds, raw, host_b, host_a, on_disk, second.bytes_written)
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def report(nbytes: int, upload_seconds: float, raw: list, host_b: list, host_a: list, on_disk: list,
           second_bytes: int) -> None:
    mb = nbytes / 1e6

    def median(runs: list) -> float:
        return statistics.median(r["seconds"] for r in runs)

    t_raw, t_b, t_a, t_disk = median(raw), median(host_b), median(host_a), median(on_disk)
    ratio = t_b / t_raw
    verdict = "met" if ratio <= 1.3 else "NOT met"
    print(f"## migrate_bench: {mb:,.0f} MB of float64 arrays through moto's S3 server on loopback\n")
    print(f"runs: {len(raw)} (medians); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| what | seconds | MB/s | vs raw download |")
    print("| --- | --- | --- | --- |")
    print(f"| checkpoint upload from host A (first, all blobs) | {upload_seconds:.2f} | "
          f"{mb / upload_seconds:.0f} | - |")
    print(f"| raw s3fs `cat` of the same objects (baseline) | {t_raw:.2f} | {mb / t_raw:.0f} | 1.00x |")
    print(f"| restore on host B from S3 (empty cache, every hash verified) | {t_b:.2f} | {mb / t_b:.0f} | "
          f"{ratio:.2f}x (target <= 1.3x: {verdict}) |")
    print(f"| restore on host A (blob cache) | {t_a:.2f} | {mb / t_a:.0f} | {t_a / t_raw:.2f}x |")
    print(f"| restore from a local-disk store | {t_disk:.2f} | {mb / t_disk:.0f} | {t_disk / t_raw:.2f}x |")
    print(f"\nsecond checkpoint after a one-element change: {second_bytes:,} bytes uploaded "
          f"({second_bytes / nbytes:.4f} of the state)")


if __name__ == "__main__":
    main()

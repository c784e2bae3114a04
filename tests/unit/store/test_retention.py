"""gc's choice of generations to keep and manifests to delete: pure logic."""

from __future__ import annotations

from elastic_proxy.store.manifest import Manifest
from elastic_proxy.store.retention import choose_kept, manifests_to_delete, referenced_bytes

MiB = 1 << 20


def manifest(generation: int, valid: bool = True, chunks: tuple[str, ...] = ()) -> Manifest:
    ref = {"names": ["a"], "pickler": "cloudpickle", "stream": f"{generation:064x}", "stream_size": 10,
           "chunk_size": MiB, "buffers": [{"size": len(chunks) * MiB, "chunks": list(chunks)}]}
    doc = {"groups": {"g": ref}}
    return Manifest(generation, f"m{generation}", doc, valid, None if valid else "tampered")


def address(n: int) -> str:
    return f"{n:064x}"[::-1]


def test_keeps_newest_valid_and_deletes_older_but_not_newer_invalid():
    history = [manifest(6, valid=False), manifest(5), manifest(4, valid=False), manifest(3), manifest(2),
               manifest(1, valid=False)]
    keep = choose_kept(history, keep_last=2, max_bytes=None)
    assert [m.generation for m in keep] == [5, 3]
    assert [m.generation for m in manifests_to_delete(history, keep)] == [2, 1]


def test_always_keeps_one_and_deletes_nothing_without_a_valid_one():
    history = [manifest(2), manifest(1)]
    assert [m.generation for m in choose_kept(history, keep_last=0, max_bytes=None)] == [2]
    invalid = [manifest(2, valid=False), manifest(1, valid=False)]
    assert choose_kept(invalid, keep_last=5, max_bytes=None) == []
    assert manifests_to_delete(invalid, []) == []


def test_max_bytes_counts_shared_chunks_once():
    shared = (address(1), address(2))
    history = [manifest(3, chunks=shared), manifest(2, chunks=shared), manifest(1, chunks=(address(3),))]
    assert referenced_bytes(history[:2]) == 2 * MiB + 20
    keep = choose_kept(history, keep_last=10, max_bytes=2 * MiB + 100)
    assert [m.generation for m in keep] == [3, 2]
    assert [m.generation for m in choose_kept(history, keep_last=10, max_bytes=1)] == [3]

"""Which generations gc keeps and which manifests it deletes (pure logic, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .manifest import Manifest


@dataclass
class GcReport:
    kept: list[int] = field(default_factory=list)
    manifests_deleted: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    temps_deleted: int = 0


def choose_kept(newest_first: Sequence[Manifest], keep_last: int, max_bytes: int | None) -> list[Manifest]:
    """The newest `keep_last` valid manifests, fewer while their blobs exceed `max_bytes`;
    never fewer than one when there is a valid one (the restore needs something to load)."""
    keep = [m for m in newest_first if m.valid][:max(1, keep_last)]
    if max_bytes is not None:
        while len(keep) > 1 and referenced_bytes(keep) > max_bytes:
            keep.pop()
    return keep


def manifests_to_delete(newest_first: Sequence[Manifest], keep: Sequence[Manifest]) -> list[Manifest]:
    """Everything older than the oldest kept generation. Invalid manifests newer than that stay,
    so `generations()` keeps reporting them; with nothing valid, nothing is deleted."""
    if not keep:
        return []
    kept = {id(m) for m in keep}
    oldest = keep[-1].generation
    return [
        m for m in newest_first
        if id(m) not in kept and (m.generation < oldest or (m.valid and m.generation == oldest))
    ]


def referenced_bytes(manifests: Iterable[Manifest]) -> int:
    """Bytes of the distinct blobs the manifests reference (shared blobs count once)."""
    sizes: dict[str, int] = {}
    for manifest in manifests:
        for ref in manifest.groups().values():
            if ref is not None:
                sizes.update(ref.blobs())
    return sum(sizes.values())

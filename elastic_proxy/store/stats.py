"""Per-process write statistics.

Benchmarks and tests read them to check that an unchanged variable is not written again. They
are reset in a forked child, so a forked checkpoint writer reports only its own writes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass
class WriteStats:
    blob_bytes_written: int = 0
    blobs_written: int = 0
    blobs_skipped: int = 0
    manifest_bytes_written: int = 0
    manifests_written: int = 0

    @property
    def bytes_written(self) -> int:
        return self.blob_bytes_written + self.manifest_bytes_written

    def snapshot(self) -> WriteStats:
        return WriteStats(**asdict(self))

    def since(self, before: WriteStats) -> WriteStats:
        """What was written after `before` (a snapshot) was taken."""
        now, then = asdict(self), asdict(before)
        return WriteStats(**{key: now[key] - then[key] for key in now})

    def reset(self) -> None:
        for key in asdict(self):
            setattr(self, key, 0)


write_stats = WriteStats()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=write_stats.reset)

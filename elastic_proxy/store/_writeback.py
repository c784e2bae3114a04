"""Start the kernel's writeback of a file's dirty pages without waiting for it (Linux).

A blob is fsynced before it is renamed to its address. Asking the kernel to start writing each
chunk as soon as it is written lets the disk work while we hash and write the next chunks, so
the fsyncs later find little left to do: one fsync per 1 MiB chunk would otherwise be 2x slower
than one big sequential write (measured in bench/store_bench.py).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load()


def start_writeback(fd: int) -> None:
    """Best effort: errors are ignored, the fsync that follows is what guarantees durability."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

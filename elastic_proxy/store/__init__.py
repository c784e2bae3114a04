"""The checkpoint store shared by the agent (writes, restores) and the CLI (lists, cleans).

See store.py for the layout and docs/internals.md for the contract.
"""

from __future__ import annotations

from .errors import IntegrityError, SerializationError, StoreError, StoreFullError
from .groupref import BufferRef, GroupRef
from .manifest import Manifest
from .retention import GcReport
from .sessions import SessionInfo, list_sessions
from .stats import WriteStats, write_stats
from .store import CHUNK_SIZE, GRACE_SECONDS, Store, open_store

__all__ = [
    "CHUNK_SIZE",
    "GRACE_SECONDS",
    "BufferRef",
    "GcReport",
    "GroupRef",
    "IntegrityError",
    "Manifest",
    "SerializationError",
    "SessionInfo",
    "Store",
    "StoreError",
    "StoreFullError",
    "WriteStats",
    "list_sessions",
    "open_store",
    "write_stats",
]

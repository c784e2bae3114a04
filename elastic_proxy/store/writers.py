"""Two kernels must not write one session at once (pure logic, no I/O).

Two browser tabs on one notebook, or the old and the new host during a hand-over, would
otherwise interleave their generations, and a restore would take whichever wrote last. Every
manifest names its writer: one id per kernel (the supervisor gives all its children the same
one in ELASTIC_PROXY_WRITER), the host and the pid. Before it uploads and again before it
commits, a writer lists the session's manifests newer than its base (the generation it restored
or last committed, and at least what was there when it first looked). A valid manifest there
from another writer, found before one of its own, means someone else writes the session: this
writer refuses, and its checkpoint fails with a message saying who; the other writer's
generations are untouched. Every manifest stays self-contained and signed, so whichever side a
restore takes, it loads a consistent state.

Two writers that commit the very same generation at once are not told apart at that moment
(no object store offers a cheap compare-and-swap on a listing); the next commit of either sees
the other's manifest and one of them refuses then.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StoreError
from .manifest import Manifest

WRITER_ENV = "ELASTIC_PROXY_WRITER"


class SessionConflictError(StoreError):
    """Another kernel writes this session: this checkpoint was refused (nothing was committed)."""


@dataclass(frozen=True)
class Writer:
    id: str
    host: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid}


def this_writer(environ: Mapping[str, str] = os.environ) -> Writer:
    return Writer(environ.get(WRITER_ENV) or secrets.token_hex(8), socket.gethostname(), os.getpid())


def writer_of(manifest: Manifest) -> dict[str, Any]:
    writer = (manifest.doc or {}).get("writer")
    return writer if isinstance(writer, dict) else {}


def find_conflict(newest_first: Iterable[Manifest], me: str, base: int) -> Manifest | None:
    """The newest valid manifest above `base` written by someone else before any of ours, or None."""
    for manifest in newest_first:
        if manifest.generation <= base:
            return None
        if not manifest.valid:
            continue  # not signed with our secret: never loaded, so it cannot mix into our history
        if writer_of(manifest).get("id") == me:
            return None  # our own commit: it checked everything below itself
        return manifest
    return None


def conflict_message(session: str, other: Manifest, base: int, now: float | None = None) -> str:
    writer = writer_of(other)
    who = f"host {writer.get('host', '?')}, pid {writer.get('pid', '?')}" if writer else "an older version"
    created = other.created
    ago = f", {max(0.0, (now or time.time()) - created):.0f} s ago" if isinstance(created, (int, float)) else ""
    return (f"another kernel is writing the session {session!r} ({who}: generation {other.generation}{ago}, "
            f"after this kernel's generation {base}). This kernel's checkpoints are refused so the two "
            "histories do not mix; the other kernel's are kept. Close one of the two notebooks, or give "
            "this kernel its own session (--session NAME or ELASTIC_PROXY_SESSION).")

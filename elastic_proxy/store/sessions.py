"""Listing the sessions of a store root, for `elastic-proxy checkpoints list`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .backends import open_backend
from .manifest import parse_manifest_name
from .paths import resolve_root

BLOBS_DIR = "blobs"
SESSION_FILE = "session.json"  # the session's name, unsigned: for display only


@dataclass(frozen=True)
class SessionInfo:
    key: str
    name: str | None
    path: str
    generations: int
    newest: int | None
    updated: float | None


def list_sessions(root: str | None = None,
                  storage_options: dict[str, Any] | None = None) -> list[SessionInfo]:
    """Every session under a root, for `elastic-proxy checkpoints list`."""
    url = resolve_root(root)
    backend = open_backend(url, storage_options)
    found = []
    for key in backend.list_dirs(backend.root):
        if key == BLOBS_DIR or key.startswith("."):
            continue
        directory = backend.join(backend.root, key)
        manifests = [
            (generation, info) for info in backend.list_files(backend.join(directory, "manifests"))
            if (generation := parse_manifest_name(info.name)) is not None
        ]
        name = _session_name(backend, backend.join(directory, SESSION_FILE))
        if name is None and not manifests:
            continue
        found.append(SessionInfo(
            key=key,
            name=name,
            path=directory,
            generations=len(manifests),
            newest=max((g for g, _ in manifests), default=None),
            updated=max((info.mtime for _, info in manifests), default=None),
        ))
    return found


def _session_name(backend: Any, path: str) -> str | None:
    try:
        name = json.loads(backend.read_bytes(path)).get("session")
    except (FileNotFoundError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None

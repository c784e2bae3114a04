"""Manifests: one signed, immutable JSON document per generation (pure logic, no I/O).

The store adds the fields in STORE_FIELDS to the agent's body and signs the canonical JSON
(sorted keys, compact) of everything but the signature with HMAC-SHA256 and the per-user
secret. A manifest whose signature does not verify is never used: its blobs could be anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import IntegrityError
from .groupref import GroupRef, check_address

FORMAT = 1
STORE_FIELDS = ("format", "session", "generation", "parent", "created", "writer", "signature")
_NAME = re.compile(r"^(\d{12})-([0-9a-f]{8})\.json$")
TAMPERED = "signature does not verify (tampered or written with another secret)"


def manifest_name(generation: int) -> str:
    """Sorts by generation; the random part keeps two writers of one generation apart."""
    return f"{generation:012d}-{secrets.token_hex(4)}.json"


def parse_manifest_name(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def canonical(doc: dict[str, Any]) -> bytes:
    unsigned = {key: value for key, value in doc.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def sign(doc: dict[str, Any], secret: bytes) -> str:
    return hmac.new(secret, canonical(doc), hashlib.sha256).hexdigest()


def build_document(body: dict[str, Any], *, session: str, generation: int, parent: int | None,
                   created: float, secret: bytes, writer: dict[str, Any] | None = None) -> bytes:
    clash = sorted(set(body) & set(STORE_FIELDS))
    if clash:
        raise ValueError(f"manifest body may not set the store's fields {clash}")
    doc = dict(body, format=FORMAT, session=session, generation=generation, parent=parent, created=created)
    if writer is not None:
        doc["writer"] = writer  # who wrote it (store/writers.py): signed like the rest
    doc = json.loads(json.dumps(doc, allow_nan=False))  # sign exactly what a reader will parse
    doc["signature"] = sign(doc, secret)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def check_document(raw: bytes, *, secret: bytes, session: str,
                   generation: int) -> tuple[dict | None, str | None]:
    """(document, None) if it is authentic and belongs here, else (document or None, problem)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"unreadable JSON ({exc})"
    if not isinstance(doc, dict):
        return None, "unreadable JSON (not an object)"
    signature = doc.get("signature")
    if not isinstance(signature, str) or not signature:
        return doc, "unsigned (no signature)"
    try:
        expected = sign(doc, secret)
    except ValueError as exc:
        return doc, f"unreadable JSON ({exc})"
    if not hmac.compare_digest(signature, expected):
        return doc, TAMPERED
    if doc.get("format") != FORMAT:
        return doc, f"unsupported format {doc.get('format')!r} (this version reads {FORMAT})"
    if doc.get("session") != session:
        return doc, f"belongs to another session ({doc.get('session')!r})"
    if doc.get("generation") != generation:
        return doc, f"file name says generation {generation}, manifest says {doc.get('generation')!r}"
    return doc, None


@dataclass
class Manifest:
    generation: int
    path: str
    doc: dict[str, Any] | None
    valid: bool
    problem: str | None = None
    _refs: dict[str, GroupRef | None] | None = field(default=None, repr=False)

    @property
    def parent(self) -> int | None:
        return (self.doc or {}).get("parent")

    @property
    def created(self) -> float | None:
        return (self.doc or {}).get("created")

    @property
    def session(self) -> str | None:
        return (self.doc or {}).get("session")

    @property
    def body(self) -> dict[str, Any]:
        """The agent's part of the document (readable even when invalid, for reports)."""
        return {key: value for key, value in (self.doc or {}).items() if key not in STORE_FIELDS}

    def __getitem__(self, key: str) -> Any:
        return (self.doc or {})[key]

    def get(self, key: str, default: Any = None) -> Any:
        return (self.doc or {}).get(key, default)

    def groups(self) -> dict[str, GroupRef | None]:
        """The group references, only from an authentic manifest (they lead to unpickling)."""
        if not self.valid:
            raise IntegrityError(f"generation {self.generation} is not valid: {self.problem}")
        if self._refs is None:
            self._refs = parse_groups(self.doc or {})
        return self._refs

    def mark_invalid(self, problem: str) -> None:
        self.valid = False
        self.problem = problem


def parse_groups(doc: dict[str, Any]) -> dict[str, GroupRef | None]:
    groups = doc.get("groups") or {}
    if not isinstance(groups, dict):
        raise IntegrityError("manifest 'groups' is not an object")
    return {str(gid): None if ref is None else GroupRef.from_json(ref) for gid, ref in groups.items()}


def referenced_addresses(doc: Any) -> Iterator[str]:
    """Blob addresses a document mentions, read leniently (gc protects even unverified ones)."""
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, dict):
        return
    for ref in groups.values():
        if not isinstance(ref, dict):
            continue
        candidates = [ref.get("stream")]
        for buffer in ref.get("buffers") or []:
            if isinstance(buffer, dict):
                candidates.extend(buffer.get("chunks") or [])
        for address in candidates:
            try:
                yield check_address(address)
            except IntegrityError:
                continue

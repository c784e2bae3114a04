"""Jupyter wire frames: parse, verify, re-sign. Pure functions and small classes, no sockets.

The supervisor sits between two keys (the client's and the child's), so every message is
verified with one key and re-signed with the other. Only the header (and, where routing
needs it, the parent header or content) is decoded; everything else travels as the bytes
it arrived in, which keeps large outputs cheap to forward.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import orjson
from jupyter_client.session import json_packer

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.4"


class WireError(ValueError):
    """A message that cannot be accepted; the text says why, for the log."""


def _hash_constructor(scheme: str):
    if not scheme.startswith("hmac-"):
        raise WireError(f"unsupported signature scheme {scheme!r}: expected hmac-<hash>")
    name = scheme[len("hmac-") :]
    try:
        hashlib.new(name)
    except ValueError as err:
        raise WireError(f"unsupported signature scheme {scheme!r}: {err}") from None
    return lambda: hashlib.new(name)


class Signer:
    """HMAC over the four dict frames (never the buffers); an empty key means unsigned."""

    def __init__(self, key: bytes, scheme: str = "hmac-sha256") -> None:
        self.key = key
        self.scheme = scheme
        self._digestmod = _hash_constructor(scheme)
        self._keyed = hmac.new(key, digestmod=self._digestmod) if key else None

    def sign(self, parts: list[bytes]) -> bytes:
        if self._keyed is None:
            return b""
        mac = self._keyed.copy()  # the key schedule is computed once, as jupyter_client's Session does
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode("ascii")

    def verify(self, signature: bytes, parts: list[bytes]) -> bool:
        if not self.key:
            return True
        return hmac.compare_digest(signature, self.sign(parts))


class ReplayGuard:
    """Remembers accepted signatures so a captured, validly signed message cannot be replayed.

    Kept by the supervisor across child respawns: a fresh child would otherwise run a replayed
    execute_request a second time. Culled like jupyter_client's Session.digest_history.
    """

    def __init__(self, size: int = 2**16) -> None:
        self.size = size
        self._seen: set[bytes] = set()

    def check_and_add(self, signature: bytes) -> bool:
        """True for a new signature (now remembered); False for a replay."""
        if not signature:
            return True
        if signature in self._seen:
            return False
        self._seen.add(signature)
        if len(self._seen) > self.size:
            for old in list(self._seen)[: max(len(self._seen) // 10, 1)]:
                self._seen.discard(old)
        return True


def _loads(frame: bytes, what: str, *, exact: bool = False) -> dict[str, Any]:
    """orjson decodes a header in a quarter of json's time, on every message. json takes what
    orjson refuses (NaN), and decodes `exact`ly what is to be re-encoded (see with_content)."""
    try:
        value = json.loads(bytes(frame)) if exact else orjson.loads(frame)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(bytes(frame))
        except (ValueError, UnicodeDecodeError) as err:
            raise WireError(f"malformed {what}: {err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise WireError(f"malformed {what}: {err}") from None
    if not isinstance(value, dict):
        raise WireError(f"malformed {what}: expected a JSON object")
    return value


@dataclass
class WireMessage:
    """One message: routing identities, the four dict frames, and buffers.

    `header` is always decoded; `parent_header`, `metadata` and `content` on first use. Frames
    and buffers are bytes, or memoryviews of libzmq's buffers for large ones (never copied).
    """

    idents: list[bytes]
    frames: list[bytes]
    buffers: list[bytes] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)
    _decoded: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def msg_type(self) -> str:
        return self.header.get("msg_type", "")

    @property
    def msg_id(self) -> str:
        return self.header.get("msg_id", "")

    def _decoded_frame(self, index: int, what: str) -> dict[str, Any]:
        if index not in self._decoded:
            self._decoded[index] = _loads(self.frames[index], what)
        return self._decoded[index]

    @property
    def parent_header(self) -> dict[str, Any]:
        return self._decoded_frame(1, "parent header")

    @property
    def metadata(self) -> dict[str, Any]:
        return self._decoded_frame(2, "metadata")

    @property
    def content(self) -> dict[str, Any]:
        return self._decoded_frame(3, "content")

    @property
    def parent_msg_id(self) -> str:
        return self.parent_header.get("msg_id", "")

    def with_content(self, changes: dict[str, Any]) -> WireMessage:
        """A copy with `changes` applied to its content (to rewrite counts and features).

        The content is decoded again with json, not orjson: orjson reads an integer beyond 64
        bits as a float, which re-encoding would then put on the wire.
        """
        content = {**_loads(self.frames[3], "content", exact=True), **changes}
        frames = [*self.frames[:3], json_packer(content)]
        return replace(self, frames=frames, _decoded={**self._decoded, 3: content})

    def with_idents(self, idents: list[bytes]) -> WireMessage:
        return replace(self, idents=list(idents))

    def to_frames(self, signer: Signer) -> list[bytes]:
        return [*self.idents, DELIMITER, signer.sign(self.frames), *self.frames, *self.buffers]


def dumps(value: dict[str, Any]) -> bytes:
    """The supervisor's own messages: orjson where it can (a twentieth of json_packer's time),
    jupyter_client's packer for what orjson refuses (integers beyond 64 bits, non-string keys)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json_packer(value)


def parse(
    raw: list[bytes], signer: Signer | None, guard: ReplayGuard | None = None
) -> WireMessage:
    """Split raw frames into a WireMessage, verifying the signature (and replay, with a guard).

    `signer=None` skips verification: for the child's messages, which can only come from the
    process the supervisor started, over ipc sockets in its own 0700 directory.
    """
    try:
        split = raw.index(DELIMITER)
    except ValueError:
        raise WireError("no <IDS|MSG> delimiter") from None
    if len(raw) < split + 6:
        raise WireError(f"too few frames ({len(raw) - split - 1} after the delimiter, need 5)")
    signature = bytes(raw[split + 1])
    frames = raw[split + 2 : split + 6]
    if signer is not None and not signer.verify(signature, frames):
        raise WireError("invalid signature")
    if guard is not None and not guard.check_and_add(signature):
        raise WireError("duplicate signature (a replayed message)")
    header = _loads(frames[0], "header")
    if not isinstance(header.get("msg_type"), str) or not header.get("msg_id"):
        raise WireError("header without msg_type or msg_id")
    return WireMessage(
        idents=[bytes(i) for i in raw[:split]],
        frames=frames,
        buffers=raw[split + 6 :],
        header=header,
    )


def new_message(
    msg_type: str,
    content: dict[str, Any],
    *,
    parent: WireMessage | None,
    session: str,
    idents: list[bytes] | None = None,
    metadata: dict[str, Any] | None = None,
    username: str = "kernel",
) -> WireMessage:
    """A message created by the supervisor itself (local replies, status, errors, welcome)."""
    header = {
        "msg_id": uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": username,
        "session": session,
        "date": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "version": PROTOCOL_VERSION,
    }
    parent_frame = parent.frames[0] if parent is not None else b"{}"
    frames = [dumps(header), parent_frame, dumps(metadata or {}), dumps(content)]
    decoded = {3: content}
    return WireMessage(
        idents=list(idents or []), frames=frames, header=header, _decoded=decoded
    )

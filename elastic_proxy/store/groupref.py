"""GroupRef: where one alias group's bytes are, as plain JSON for the manifest."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import IntegrityError

_ADDRESS = re.compile(r"^[0-9a-f]{64}$")


def check_address(address: Any) -> str:
    """Addresses become file names: anything but 64 hex digits could walk out of the blob dir."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise IntegrityError(f"not a blob address: {address!r}")
    return address


@dataclass(frozen=True)
class BufferRef:
    """One out-of-band pickle buffer, split into chunks of `GroupRef.chunk_size` bytes."""

    size: int
    chunks: tuple[str, ...]


@dataclass(frozen=True)
class GroupRef:
    names: tuple[str, ...]
    pickler: str
    stream: str
    stream_size: int
    chunk_size: int
    buffers: tuple[BufferRef, ...]

    @property
    def size(self) -> int:
        return self.stream_size + sum(buffer.size for buffer in self.buffers)

    def blobs(self) -> Iterator[tuple[str, int]]:
        """Every (address, size) the group needs, the stream first."""
        yield self.stream, self.stream_size
        for buffer in self.buffers:
            for index, address in enumerate(buffer.chunks):
                yield address, min(self.chunk_size, buffer.size - index * self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "pickler": self.pickler,
            "stream": self.stream,
            "stream_size": self.stream_size,
            "chunk_size": self.chunk_size,
            "buffers": [{"size": b.size, "chunks": list(b.chunks)} for b in self.buffers],
            "size": self.size,
        }

    @classmethod
    def from_json(cls, data: Any) -> GroupRef:
        try:
            chunk_size = int(data["chunk_size"])
            buffers = tuple(
                BufferRef(int(b["size"]), tuple(check_address(a) for a in b["chunks"]))
                for b in data["buffers"]
            )
            ref = cls(
                names=tuple(str(n) for n in data["names"]),
                pickler=str(data["pickler"]),
                stream=check_address(data["stream"]),
                stream_size=int(data["stream_size"]),
                chunk_size=chunk_size,
                buffers=buffers,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"malformed group reference: {exc!r}") from exc
        for buffer in ref.buffers:
            if chunk_size <= 0 or len(buffer.chunks) != -(-buffer.size // chunk_size):
                raise IntegrityError("malformed group reference: chunk count does not match buffer size")
        return ref

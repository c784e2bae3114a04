"""A local copy of a remote store's blobs, so a restore on the same host reads its disk, not S3.

The forked checkpoint writer puts each blob it uploads here too, and a restore that had to
download a blob keeps it. Entries are named by their blake3 address and checked against it on
every read: a corrupted or truncated entry is deleted and the blob fetched again from the
store, so a damaged cache costs a download, never a generation. Writes are atomic (temp file +
rename) but not fsynced: after a power loss an entry may be garbage, which the check catches.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import blake3

from .paths import product_data_dir

CACHE_ENV = "ELASTIC_PROXY_CACHE"


def default_cache_dir(environ: Any = os.environ) -> str | None:
    """$ELASTIC_PROXY_CACHE (a directory, or "off"), else blob-cache under the Jupyter data dir."""
    chosen = environ.get(CACHE_ENV, "")
    if chosen.lower() in ("off", "none", "0", "false"):
        return None
    return os.path.abspath(os.path.expanduser(chosen)) if chosen else os.path.join(product_data_dir(), "blob-cache")


class BlobCache:
    def __init__(self, directory: str):
        self.directory = directory
        self.hits = 0
        self.evicted = 0

    def path(self, address: str) -> str:
        return os.path.join(self.directory, address[:2], address)

    def read_into(self, address: str, view: memoryview) -> bool:
        """Fill `view` with the blob if the cache holds a good copy of exactly that size."""
        path = self.path(address)
        try:
            with open(path, "rb", buffering=0) as f:
                if os.fstat(f.fileno()).st_size != len(view):
                    raise ValueError("wrong size")
                count = f.readinto(view)
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            self.evict(address)
            return False
        if count != len(view) or blake3.blake3(view).hexdigest() != address:
            self.evict(address)
            return False
        self.hits += 1
        return True

    def read(self, address: str) -> bytes | None:
        try:
            with open(self.path(address), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError:
            self.evict(address)
            return None
        if blake3.blake3(data).hexdigest() != address:
            self.evict(address)
            return None
        self.hits += 1
        return data

    def has(self, address: str) -> bool:
        return os.path.exists(self.path(address))

    def put(self, address: str, data: Any) -> None:
        """Best effort: a cache that cannot be written (full disk, permissions) is only slower."""
        path = self.path(address)
        if os.path.exists(path):
            return
        folder = os.path.dirname(path)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                view = memoryview(data).cast("B")
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except OSError:
            _unlink_quietly(tmp)

    def evict(self, address: str) -> None:
        self.evicted += 1
        _unlink_quietly(self.path(address))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

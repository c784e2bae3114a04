"""File access for the store: a local-disk backend and a generic fsspec one.

Both give the same small set of operations; the store above them does not know which it has.

- Local (a path, or any URL fsspec resolves to its LocalFileSystem): writes go to a temp name
  in the same dir, are fsynced, renamed, and the dir is fsynced. Writes are batched: each temp
  file is written and its writeback started at once; a batch of up to _OPEN_BATCH files is then
  fsynced together, and `flush()` renames them all and fsyncs the dirs. A file thus only appears
  under its final name complete and durable, and the first fsync's journal commit covers the
  metadata of the whole batch (an fsync per file as it is written costs a journal commit each:
  2.5x slower for 1 GB in 1 MiB blobs).
- fsspec (object stores, memory://): each file is put once (`pipe_file(mode="create")`, on S3 a
  conditional PUT: never overwrite; an object store makes the object visible only when the
  upload completes). Listings bypass fsspec's listing cache (other processes and hosts write).
  A remote one keeps a local BlobCache (cache.py) and streams restores (remote.py).

After os.fork(): the local backend holds no threads, locks or sockets. A remote fsspec
filesystem (s3fs, gcsfs) holds an event loop thread and HTTP sessions that must not be reused
in the child: call `Store.after_fork()` in the child, which makes a fresh filesystem instance
(fsspec resets its event loop in a forked child, so the new instance starts its own).
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._writeback import start_writeback
from .cache import BlobCache, default_cache_dir
from .errors import StoreGoneError
from .remote import Prefetcher, Uploader, os_errors, storage_options_for

TMP_PREFIX = ".tmp-"
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_OPEN_BATCH = 128  # files kept open between write and fsync; well under the usual 1024 fd limit


def _fill(f: Any, view: memoryview) -> int:
    """Read from `f` into `view` until it is full or the file ends; returns the bytes read."""
    total = 0
    while total < len(view):
        count = f.readinto(view[total:])
        if not count:
            break
        total += count
    return total


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    size: int
    mtime: float


Buffers = Sequence["bytes | bytearray | memoryview"]


class LocalBackend:
    remote = False

    def __init__(self, root: str):
        self.root = root
        self._open: list[tuple[int, str, str]] = []  # (fd, temp, final) written, not yet fsynced
        self._synced: list[tuple[str, str]] = []  # (temp, final) durable, not yet renamed
        self._dirty_dirs: set[str] = set()
        self._made_dirs: set[str] = set()
        self._forked_from: int | None = None  # in a forked writer: its kernel's pid
        self._root_existed_at_fork = False

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def makedirs(self, path: str) -> None:
        """Create missing dirs 0700; remember them so their parents get fsynced on flush.

        A remembered directory may have been removed since (`checkpoints forget`, gc, a deleted
        store): then everything is checked again. A writer that outlived its kernel does not
        bring back a store root deleted since it was forked (a pipeline's temporary directory,
        removed once the kernel was shut down)."""
        try:
            self._makedirs(path)
        except FileNotFoundError:
            self._made_dirs.clear()
            self._makedirs(path)

    def _makedirs(self, path: str) -> None:
        if path in self._made_dirs or os.path.isdir(path):
            self._made_dirs.add(path)
            return
        if path == self.root and self._root_existed_at_fork and os.getppid() != self._forked_from:
            raise StoreGoneError(f"the checkpoint store {self.root} was deleted after its kernel ended; "
                                 "this write is abandoned")
        parent = os.path.dirname(path)
        if parent != path:
            self._makedirs(parent)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
            self._dirty_dirs.add(parent)
        except FileExistsError:
            pass
        self._made_dirs.add(path)

    def exists_refresh(self, path: str) -> bool:
        """True if the file exists; also bumps its mtime so a concurrent gc's grace period restarts."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def write_new(self, path: str, parts: Buffers) -> int | None:
        """Queue a durable, atomic write of a new file; returns the bytes written."""
        directory = os.path.dirname(path)
        self.makedirs(directory)
        tmp = os.path.join(directory, f"{TMP_PREFIX}{os.path.basename(path)[:16]}-{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # another process removed the dir (forget, gc): make it again
            self._made_dirs.clear()
            self.makedirs(directory)
            fd = os.open(tmp, flags, 0o600)
        self._open.append((fd, tmp, path))
        written = 0
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                count = os.write(fd, view)
                written += count
                view = view[count:]
        start_writeback(fd)
        self._dirty_dirs.add(directory)
        if len(self._open) >= _OPEN_BATCH:
            self._sync_open()
        return written

    def _sync_open(self) -> None:
        while self._open:
            fd, tmp, path = self._open[-1]
            os.fsync(fd)
            os.close(fd)
            self._open.pop()
            self._synced.append((tmp, path))

    def flush(self) -> None:
        """Make every queued write durable, then visible under its final name."""
        self._sync_open()
        while self._synced:
            tmp, path = self._synced.pop()
            try:
                os.rename(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        while self._dirty_dirs:
            directory = self._dirty_dirs.pop()
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abort(self) -> None:
        """Drop queued writes and their temp files (after an error, e.g. a full disk)."""
        while self._open:
            fd, tmp, _ = self._open.pop()
            _close_quietly(fd)
            _unlink_quietly(tmp)
        while self._synced:
            _unlink_quietly(self._synced.pop()[0])
        self._dirty_dirs.clear()

    def prefetch(self, paths_and_sizes: Sequence[tuple[str, int]]) -> None:
        """Reads from a local disk need no read-ahead (the kernel's does it)."""

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_into(self, path: str, view: memoryview) -> int:
        """Fill `view` from the file; returns the number of bytes read (short if the file is)."""
        with open(path, "rb", buffering=0) as f:
            return _fill(f, view)

    def list_files(self, path: str, recursive: bool = False) -> Iterator[FileInfo]:
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if recursive:
                    yield from self.list_files(entry.path, recursive=True)
            elif stat.S_ISREG(info.st_mode):
                yield FileInfo(entry.path, entry.name, info.st_size, info.st_mtime)

    def list_dirs(self, path: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def mtime(self, path: str) -> float | None:
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        _unlink_quietly(path)

    def remove_tree(self, path: str) -> None:
        self._made_dirs.clear()
        for info in list(self.list_files(path, recursive=True)):
            _unlink_quietly(info.path)
        for root, dirs, _files in os.walk(path, topdown=False):
            for name in dirs:
                _rmdir_quietly(os.path.join(root, name))
        _rmdir_quietly(path)

    def after_fork(self) -> None:
        self._open.clear()  # the parent's unfinished writes are its own business
        self._synced.clear()
        self._dirty_dirs.clear()
        self._forked_from = os.getppid()
        self._root_existed_at_fork = os.path.isdir(self.root)


class FsspecBackend:
    """Any fsspec filesystem; for a remote one (s3://, gs://, ...) also a local blob cache, and
    restore reads that a Prefetcher streams (see remote.py)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.storage_options = storage_options_for(url, storage_options)
        self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)
        self.remote = "memory" not in _protocols(self.fs)
        cache_dir = default_cache_dir() if self.remote else None
        self.cache = BlobCache(cache_dir) if cache_dir else None
        self.prefetcher = Prefetcher(self.fs)
        self.uploader = Uploader(self.fs)

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def dirname(self, path: str) -> str:
        return posixpath.dirname(path)

    def makedirs(self, path: str) -> None:
        with os_errors():
            self.fs.makedirs(path, exist_ok=True)

    def exists_refresh(self, path: str) -> bool:
        """Object stores cannot bump an object's time without rewriting it: see Store.gc."""
        with os_errors():
            return bool(self.fs.exists(path))

    def write_new(self, path: str, parts: Buffers) -> int | None:
        """Put the file once (S3: a conditional PUT, If-None-Match), never overwriting; an object
        is visible only once its upload completed. Blobs are queued (complete after `flush()`);
        anything else is put at once, after the queued blobs, and None means it existed."""
        data = parts[0] if len(parts) == 1 else b"".join(memoryview(p).cast("B") for p in parts)
        data = bytes(data) if isinstance(data, memoryview) else data
        address = _blob_address(path)
        if address is None:
            self.flush()
            try:
                with os_errors():
                    self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return None
            return len(data)
        self.uploader.put(path, data)
        if self.cache is not None:
            self.cache.put(address, data)
        return len(data)

    def flush(self) -> None:
        """Wait for the queued uploads; raises the first one's error."""
        self.uploader.flush()

    def abort(self) -> None:
        self.uploader.abort()

    def prefetch(self, paths_and_sizes: Sequence[tuple[str, int]]) -> None:
        """Start downloading the blobs a read is about to need (those the cache lacks), in order."""
        wanted = []
        for path, size in paths_and_sizes:
            address = _blob_address(path)
            if address is not None and (self.cache is None or not self.cache.has(address)):
                wanted.append((path, size))
        self.prefetcher.plan(wanted)

    def read_bytes(self, path: str) -> bytes:
        address = _blob_address(path)
        if address is None:
            with os_errors():
                return bytes(self.fs.cat_file(path))
        cached = self.cache.read(address) if self.cache is not None else None
        if cached is not None:
            return cached
        data = self.prefetcher.fetch(path)
        if self.cache is not None:
            self.cache.put(address, data)
        return data

    def read_into(self, path: str, view: memoryview) -> int:
        address = _blob_address(path)
        if self.cache is not None and address is not None and self.cache.read_into(address, view):
            return len(view)
        data = self.prefetcher.fetch(path) if address is not None else self.read_bytes(path)
        count = min(len(data), len(view))
        view[:count] = data[:count]
        if self.cache is not None and address is not None:
            self.cache.put(address, data)
        return count

    def list_files(self, path: str, recursive: bool = False) -> Iterator[FileInfo]:
        try:
            with os_errors():
                self.fs.invalidate_cache(path)  # other processes and hosts write here too
                found = self.fs.find(path, detail=True, maxdepth=None if recursive else 1)
        except FileNotFoundError:
            return
        for full, info in sorted(found.items()):
            if info.get("type") == "file":
                yield FileInfo(full, posixpath.basename(full), int(info.get("size") or 0), _info_mtime(info))

    def list_dirs(self, path: str) -> list[str]:
        try:
            with os_errors():
                self.fs.invalidate_cache(path)
                entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")
        return sorted(names)

    def mtime(self, path: str) -> float | None:
        try:
            with os_errors():
                self.fs.invalidate_cache(path)
                return _info_mtime(self.fs.info(path))
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        try:
            with os_errors():
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        address = _blob_address(path)
        if self.cache is not None and address is not None:
            self.cache.evict(address)

    def remove_tree(self, path: str) -> None:
        try:
            with os_errors():
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def after_fork(self) -> None:
        """A fresh client: the parent's event loop thread and HTTP connections are not the child's
        (fsspec resets its loop in a forked child; the old instance refuses to run there)."""
        self.fs, self.root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **self.storage_options)
        self.prefetcher = Prefetcher(self.fs)
        self.uploader = Uploader(self.fs)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _blob_address(path: str) -> str | None:
    """The address if `path` is a blob (blobs/ab/<64 hex>), else None."""
    name = posixpath.basename(path)
    parent = posixpath.dirname(path)
    if (len(name) == 64 and posixpath.basename(parent) == name[:2]
            and posixpath.basename(posixpath.dirname(parent)) == "blobs"):
        try:
            int(name, 16)
        except ValueError:
            return None
        return name
    return None


def open_backend(url: str, storage_options: dict[str, Any] | None = None) -> LocalBackend | FsspecBackend:
    fs, path = fsspec.core.url_to_fs(url, **storage_options_for(url, storage_options))
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(os.path.abspath(path))
    return FsspecBackend(url, storage_options)


def _info_mtime(info: dict[str, Any]) -> float:
    """fsspec filesystems name the modification time differently; unknown means "just now",
    which is the safe answer for gc (a blob of unknown age is never old enough to delete)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return time.time()


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass

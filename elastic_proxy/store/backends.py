"""File access for the store: a local-disk backend and a generic fsspec one.

Both give the same small set of operations; the store above them does not know which it has.

- Local (a path, or any URL fsspec resolves to its LocalFileSystem): writes go to a temp name
  in the same dir, are fsynced, renamed, and the dir is fsynced. Writes are pipelined: a window
  of files is kept open with writeback started, and fsynced+renamed when the window is full or
  on `flush()`, so a file only ever appears under its final name complete and durable.
- fsspec (object stores, memory://): each file is put once with mode "xb" (never overwrite; an
  object store makes the object visible only when the upload completes).

After os.fork(): the local backend holds no threads, locks or sockets. A remote fsspec
filesystem (s3fs, gcsfs) holds an event loop thread and HTTP sessions that must not be reused
in the child: call `Store.after_fork()` in the child, which makes a fresh filesystem instance.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._writeback import start_writeback

TMP_PREFIX = ".tmp-"
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_PIPELINE_WINDOW = 32


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    size: int
    mtime: float


Buffers = Sequence["bytes | bytearray | memoryview"]


class LocalBackend:
    def __init__(self, root: str):
        self.root = root
        self._pending: deque[tuple[int, str, str]] = deque()
        self._dirty_dirs: set[str] = set()
        self._made_dirs: set[str] = set()

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def dirname(self, path: str) -> str:
        return os.path.dirname(path)

    def makedirs(self, path: str) -> None:
        """Create missing dirs 0700; remember them so their parents get fsynced on flush."""
        if path in self._made_dirs or os.path.isdir(path):
            self._made_dirs.add(path)
            return
        parent = os.path.dirname(path)
        if parent != path:
            self.makedirs(parent)
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

    def write_new(self, path: str, parts: Buffers) -> int:
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
        self._pending.append((fd, tmp, path))
        written = 0
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                count = os.write(fd, view)
                written += count
                view = view[count:]
        start_writeback(fd)
        self._dirty_dirs.add(directory)
        while len(self._pending) > _PIPELINE_WINDOW:
            self._finish(self._pending.popleft())
        return written

    def flush(self) -> None:
        """Make every queued write durable and visible under its final name."""
        while self._pending:
            self._finish(self._pending.popleft())
        while self._dirty_dirs:
            directory = self._dirty_dirs.pop()
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abort(self) -> None:
        """Drop queued writes and their temp files (after an error, e.g. a full disk)."""
        while self._pending:
            fd, tmp, _ = self._pending.popleft()
            _close_quietly(fd)
            _unlink_quietly(tmp)
        self._dirty_dirs.clear()

    def _finish(self, item: tuple[int, str, str]) -> None:
        fd, tmp, path = item
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_into(self, path: str, view: memoryview) -> int:
        """Fill `view` from the file; returns the number of bytes read (short if the file is)."""
        with open(path, "rb", buffering=0) as f:
            total = 0
            while total < len(view):
                count = f.readinto(view[total:])
                if not count:
                    break
                total += count
            return total

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
        self._pending.clear()  # the parent's fds are its own business
        self._dirty_dirs.clear()


class FsspecBackend:
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(url, **self.storage_options)

    def join(self, *parts: str) -> str:
        return posixpath.join(*parts)

    def dirname(self, path: str) -> str:
        return posixpath.dirname(path)

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def exists_refresh(self, path: str) -> bool:
        """Object stores cannot bump an object's time without rewriting it: see Store.gc."""
        return bool(self.fs.exists(path))

    def write_new(self, path: str, parts: Buffers) -> int:
        written = 0
        try:
            with self.fs.open(path, "xb") as f:
                for part in parts:
                    written += f.write(part) or 0
        except FileExistsError:
            return 0
        return written

    def flush(self) -> None:
        """Every write_new was complete when it returned."""

    def abort(self) -> None:
        """Nothing is queued."""

    def read_bytes(self, path: str) -> bytes:
        return bytes(self.fs.cat_file(path))

    def read_into(self, path: str, view: memoryview) -> int:
        with self.fs.open(path, "rb") as f:
            total = 0
            while total < len(view):
                count = f.readinto(view[total:])
                if not count:
                    break
                total += count
            return total

    def list_files(self, path: str, recursive: bool = False) -> Iterator[FileInfo]:
        try:
            found = self.fs.find(path, detail=True, maxdepth=None if recursive else 1)
        except FileNotFoundError:
            return
        for full, info in sorted(found.items()):
            if info.get("type") == "file":
                yield FileInfo(full, posixpath.basename(full), int(info.get("size") or 0), _info_mtime(info))

    def list_dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")
        return sorted(names)

    def mtime(self, path: str) -> float | None:
        try:
            return _info_mtime(self.fs.info(path))
        except FileNotFoundError:
            return None

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def remove_tree(self, path: str) -> None:
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def after_fork(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, **self.storage_options)


def open_backend(url: str, storage_options: dict[str, Any] | None = None) -> LocalBackend | FsspecBackend:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
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

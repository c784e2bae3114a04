"""What an object store (s3fs and the other async fsspec filesystems) needs beyond a plain filesystem.

- Retries: botocore's own "standard" retry mode (exponential backoff with jitter on throttling,
  5xx answers and connection errors) unless the usual AWS settings choose one
  (AWS_MAX_ATTEMPTS / AWS_RETRY_MODE, or the config file's max_attempts / retry_mode). After
  them, the error surfaces as an OSError: the checkpoint fails and the previous one is kept.
- Credentials and endpoint come from botocore's usual chain (environment incl.
  AWS_ENDPOINT_URL, ~/.aws/config and credentials, instance or pod roles); nothing here reads
  or copies them, so they cannot end up in a manifest, a log or a report.
- Reads on restore: `Prefetcher` keeps a window of blob downloads in flight on the filesystem's
  event loop, so a restore streams at the bandwidth of concurrent GETs instead of paying one
  round trip per 1 MiB chunk.
"""

from __future__ import annotations

import asyncio
import configparser
import errno
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from fsspec.asyn import sync

DEFAULT_RETRIES = {"mode": "standard", "max_attempts": 8}
WINDOW_BLOBS = 32
WINDOW_BYTES = 64 << 20
WINDOW_UPLOADS = 16


def storage_options_for(url: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec storage options for the store at `url` (the caller's win over these defaults)."""
    options = dict(given or {})
    if url.split("://", 1)[0] in ("s3", "s3a") and not _aws_chooses_retries():
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", dict(DEFAULT_RETRIES))
        options["config_kwargs"] = config
    return options


def _aws_chooses_retries() -> bool:
    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        return True
    path = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return False
    profile = os.environ.get("AWS_PROFILE", "default")
    section = profile if profile == "default" else f"profile {profile}"
    return parser.has_section(section) and any(
        parser.has_option(section, key) for key in ("max_attempts", "retry_mode"))


@contextmanager
def os_errors() -> Iterator[None]:
    """Errors of the remote client (botocore, aiohttp, timeouts) as OSError, which the store
    reports as a failed checkpoint; FileNotFoundError and FileExistsError pass as they are."""
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        raise OSError(errno.EIO, f"{type(exc).__name__}: {exc}") from exc


class Prefetcher:
    """Blob downloads a bounded window ahead of the reads, in the order they will be read."""

    def __init__(self, fs: Any, window_blobs: int = WINDOW_BLOBS, window_bytes: int = WINDOW_BYTES):
        self.fs = fs
        self.window_blobs = window_blobs
        self.window_bytes = window_bytes
        self._queue: deque[tuple[str, int]] = deque()
        self._pending: dict[str, tuple[Future, int]] = {}
        self.bytes_fetched = 0
        self._connected = False
        self._lock = threading.Lock()

    def plan(self, paths_and_sizes: Iterable[tuple[str, int]]) -> None:
        """The blobs about to be read; replaces an earlier plan (its unread downloads are dropped)."""
        planned = list(paths_and_sizes)
        keep = {path for path, _ in planned}
        with self._lock:
            for path in [p for p in self._pending if p not in keep]:
                self._pending.pop(path)[0].cancel()
            self._queue = deque((p, s) for p, s in planned if p not in self._pending)

    def fetch(self, path: str) -> bytes:
        """The blob's bytes: from a download already in flight, else downloaded now. Thread-safe:
        the store's readers call it from a few threads at once."""
        with self._lock:
            self._top_up()
            started = self._pending.pop(path, None)
            future = started[0] if started else self._start(path)
            self._top_up()
        with os_errors():
            data = future.result()
        self.bytes_fetched += len(data)
        return bytes(data)

    def _top_up(self) -> None:
        in_flight = sum(size for _, size in self._pending.values())
        while self._queue and len(self._pending) < self.window_blobs and (
                in_flight < self.window_bytes or not self._pending):
            path, size = self._queue.popleft()
            if path not in self._pending:
                self._pending[path] = (self._start(path), size)
                in_flight += size

    def _start(self, path: str) -> Future:
        if getattr(self.fs, "async_impl", False):
            self._connected = self._connected or connect(self.fs)
            return asyncio.run_coroutine_threadsafe(self.fs._cat_file(path), self.fs.loop)
        return _done(self.fs.cat_file, path)


class Uploader:
    """Blob uploads, a bounded window of them in flight on the filesystem's event loop, so a
    checkpoint is not one round trip per 1 MiB chunk. `flush()` returns once all completed
    (the store flushes before it commits a manifest that names them) or raises the first error."""

    def __init__(self, fs: Any, window: int = WINDOW_UPLOADS):
        self.fs = fs
        self.window = window
        self._in_flight: deque[Future] = deque()
        self._connected = False

    def put(self, path: str, data: bytes | bytearray) -> None:
        if not getattr(self.fs, "async_impl", False):
            self._in_flight.append(_done(self._put_sync, path, data))
        else:
            self._connected = self._connected or connect(self.fs)
            self._in_flight.append(asyncio.run_coroutine_threadsafe(self._put(path, data), self.fs.loop))
        while len(self._in_flight) > self.window:
            self._wait(self._in_flight.popleft())

    def flush(self) -> None:
        try:
            while self._in_flight:
                self._wait(self._in_flight.popleft())
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        while self._in_flight:
            self._in_flight.popleft().cancel()

    async def _put(self, path: str, data: bytes | bytearray) -> None:
        try:
            await self.fs._pipe_file(path, data, mode="create")
        except FileExistsError:
            pass  # the same bytes, put by another writer first

    def _put_sync(self, path: str, data: bytes | bytearray) -> None:
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            pass

    @staticmethod
    def _wait(future: Future) -> None:
        with os_errors():
            future.result()


def connect(fs: Any) -> bool:
    """Open the client once before concurrent calls (each would otherwise open its own)."""
    if hasattr(fs, "set_session"):
        with os_errors():
            sync(fs.loop, fs.set_session)
    return True


def _done(function: Any, *args: Any) -> Future:
    future: Future = Future()
    try:
        future.set_result(function(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future

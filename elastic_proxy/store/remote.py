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
            if not self._connected and hasattr(self.fs, "set_session"):
                with os_errors():
                    sync(self.fs.loop, self.fs.set_session)  # once: concurrent first calls would each connect
            self._connected = True
            return asyncio.run_coroutine_threadsafe(self.fs._cat_file(path), self.fs.loop)
        future: Future = Future()
        try:
            future.set_result(self.fs.cat_file(path))
        except Exception as exc:
            future.set_exception(exc)
        return future

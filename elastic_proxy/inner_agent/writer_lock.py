"""A lock file that a checkpoint writer holds while it writes, so a restore waits for it.

When a kernel child is killed, its forked checkpoint writer is not: it finishes and commits the
generation the user's last cells made. A new child that restored at once would take the older
generation and lose those cells. The writer holds an exclusive flock for its whole life (the
kernel releases it when the process ends, however it ends); a restore takes the lock shared, so
it waits for a writer in flight, and only for that. The lock lives on the local machine, next
to the kernel's runtime files, whatever the store's URL: writer and restorer share a machine
in the crash case this is for.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from typing import Any

POLL_SECONDS = 0.05


def lock_path(store: Any) -> str:
    from jupyter_core.paths import jupyter_runtime_dir

    folder = os.path.join(jupyter_runtime_dir(), "elastic-proxy-writers")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = hashlib.blake2b(f"{store.root}\0{store.session}".encode(), digest_size=16).hexdigest()
    return os.path.join(folder, f"{key}.lock")


def hold_while_writing(store: Any) -> None:
    """In the forked writer: take the lock for the rest of the process's life (never released by hand)."""
    fd = os.open(lock_path(store), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def wait_for_writers(store: Any, timeout: float) -> float:
    """Wait (at most `timeout` s) until no writer holds the lock; returns the seconds waited."""
    started = time.monotonic()
    fd = os.open(lock_path(store), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return time.monotonic() - started
            except BlockingIOError:
                if time.monotonic() - started >= timeout:
                    return time.monotonic() - started
                time.sleep(POLL_SECONDS)
    finally:
        os.close(fd)

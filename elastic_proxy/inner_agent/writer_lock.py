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

import contextlib
import fcntl
import hashlib
import os
import time
from typing import Any, Callable

POLL_SECONDS = 0.05


def lock_path(store: Any) -> str:
    from jupyter_core.paths import jupyter_runtime_dir

    folder = os.path.join(jupyter_runtime_dir(), "elastic-proxy-writers")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = hashlib.blake2b(f"{store.root}\0{store.session}".encode(), digest_size=16).hexdigest()
    return os.path.join(folder, f"{key}.lock")


def hold_while_writing(store: Any) -> None:
    """In the forked writer: announce itself, then take the lock for the rest of its life.

    The announcement (a file named after its pid) covers a writer still waiting for the lock
    behind another one: a restore that got the lock between the two would miss it.
    """
    path = lock_path(store)
    os.close(os.open(f"{path}.{os.getpid()}", os.O_WRONLY | os.O_CREAT, 0o600))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _live_writers(path: str) -> list[int]:
    """Pids of announced writers still running (announcements of dead ones are removed)."""
    folder, name = os.path.split(path)
    alive = []
    for entry in os.listdir(folder):
        if not entry.startswith(name + "."):
            continue
        pid = entry[len(name) + 1:]
        if not pid.isdigit():
            continue
        if _running(int(pid)):
            alive.append(int(pid))
        else:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, entry))
    return alive


def _running(pid: int) -> bool:
    """Alive and not a zombie (a finished writer whose parent has not reaped it yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_writers(store: Any, timeout: float, on_wait: Callable[[float], None] | None = None,
                     every: float = 2.0) -> float:
    """Wait (at most `timeout` s) until no writer holds or waits for the lock; returns the seconds waited.

    `on_wait(seconds so far)` is called every `every` seconds of waiting: a long wait (a dead kernel's
    writer finishing gigabytes) must show that it is alive, to the user and to the supervisor."""
    started = last_said = time.monotonic()
    path = lock_path(store)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                if not [pid for pid in _live_writers(path) if pid != os.getpid()]:
                    return time.monotonic() - started
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now - started >= timeout:
                return now - started
            if on_wait is not None and now - last_said >= every:
                last_said = now
                on_wait(now - started)
            time.sleep(POLL_SECONDS)
    finally:
        os.close(fd)

"""Open files in checkpoints: stored as (path, mode, position), reopened without ever truncating.

dill re-opens a handle with its original mode, so a file written with "w" came back empty after
a restore. Here a writable handle comes back in append mode ("r+" for "w+"), a read-only one
at its old position, and a file that is gone fails to load (the variable is then reported lost).
The reducers are installed only around the store's pickling call (`store_file_reducers`), so the
user's own pickling is never affected.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import cloudpickle

_FILE_TYPES = (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter, io.BufferedRandom, io.FileIO)


def safe_mode(mode: str) -> str:
    """The mode to reopen with: never one that truncates ("w") or fails if the file exists ("x")."""
    binary = "b" in mode
    plus = "+" in mode
    if "r" in mode:
        base = "r+" if plus else "r"
    elif plus:
        base = "r+"
    else:
        base = "a"
    return base + ("b" if binary else "")


def reopen(path: str, mode: str, position: int | None, encoding: str | None, closed: bool) -> Any:
    """Unpickling entry point: reopen a stored file handle safely."""
    if closed:
        with open(os.devnull, safe_mode(mode), encoding=None if "b" in mode else encoding) as handle:
            pass
        return handle
    new_mode = safe_mode(mode)
    handle = open(path, new_mode, encoding=None if "b" in new_mode else encoding)  # noqa: SIM115 (returned)
    if position is not None and "a" not in new_mode:
        handle.seek(position)
    return handle


def reduce_file(handle: Any) -> tuple[Any, tuple[Any, ...]]:
    """Reducer: never flushes nor calls tell() on a writable handle (that would write its buffer
    from the snapshot process, duplicating data the user's process writes later)."""
    name = getattr(handle, "name", None)
    if not isinstance(name, str) or name.startswith("<"):
        raise TypeError(f"cannot store a file handle without a path ({name!r})")
    mode = getattr(handle, "mode", "r")
    if isinstance(handle, io.FileIO):
        mode = mode.replace("b", "") + "b"
    closed = bool(handle.closed)
    position = None
    if not closed and not handle.writable():
        position = handle.tell()
    encoding = getattr(handle, "encoding", None)
    return reopen, (os.path.abspath(name), mode, position, encoding, closed)


@contextlib.contextmanager
def store_file_reducers() -> Iterator[None]:
    """Route file handles through `reduce_file` in cloudpickle (tried first by the store) for the
    duration of one write; cloudpickle's table wins over copyreg's, hence the direct entry."""
    table = getattr(cloudpickle.cloudpickle.Pickler, "_dispatch_table", None)
    if table is None:
        yield
        return
    saved = {cls: table.get(cls) for cls in _FILE_TYPES}
    for cls in _FILE_TYPES:
        table[cls] = reduce_file
    try:
        yield
    finally:
        for cls, previous in saved.items():
            if previous is None:
                table.pop(cls, None)
            else:
                table[cls] = previous

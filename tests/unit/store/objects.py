"""Objects the store tests pickle; importable by name so cloudpickle stores them by reference."""

from __future__ import annotations

import os


def create_marker(path: str) -> str:
    with open(path, "w") as f:
        f.write("unpickled")
    return path


class Marker:
    """Unpickling this creates a file: proves whether a stream was ever unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return create_marker, (self.path,)


def marker_exists(path: str) -> bool:
    return os.path.exists(path)

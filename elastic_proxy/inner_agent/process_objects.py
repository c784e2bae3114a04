"""The kernel and the shell: where the agent's walks over a variable's objects stop.

A Comm (every ipywidget holds one) or a bound `get_ipython` reaches the kernel, hence the whole
process: walking it to fingerprint the variable or find what it shares took 0.1-0.7 s per cell
that touched it, and growing. They hold sockets and threads, so a fingerprint through them was
opaque anyway, and sharing them is not state a checkpoint could keep."""

from __future__ import annotations

import sys

_PROCESS_OBJECTS = (("ipykernel.kernelbase", "Kernel"), ("IPython.core.interactiveshell", "InteractiveShell"))


def process_object_types() -> tuple[type, ...]:
    """The classes among them that are imported (none are imported here)."""
    found = []
    for module_name, name in _PROCESS_OBJECTS:
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)

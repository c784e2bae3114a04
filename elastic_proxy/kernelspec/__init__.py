"""Kernelspecs that start the elastic-proxy supervisor: ours ("Python 3 (elastic)") and wrappers of any
installed kernelspec ("Bash (elastic)").

The spec dicts are built by pure functions; ``install_spec`` writes one to a temporary directory with
its resources and lets jupyter_client's KernelSpecManager copy it into place, as ``ipykernel install``
does, so the location rules (--user, --prefix, sys.prefix) are Jupyter's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

from elastic_proxy import __version__

KERNEL_NAME = "python3-elastic"
DISPLAY_NAME = "Python 3 (elastic)"
WRAPPED_SUFFIX = "-elastic"
METADATA_KEY = "elastic_proxy"
SUPERVISOR_MODULE = "elastic_proxy.proxy"
LOGOS_DIR = Path(__file__).resolve().parent
LOGO_FILES = ("logo-32x32.png", "logo-64x64.png")
# Keys of a wrapped spec's metadata we must not copy: the supervisor does not implement CurveZMQ, and a
# provisioner would launch the supervisor itself the child's way (the child still gets it, since the
# supervisor starts the child from the child's own spec).
UNCOPIED_METADATA = ("supported_encryption", "kernel_provisioner")
# The names jupyter_client accepts (it checks only after we would have staged the files).
_KERNEL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def supervisor_argv(child_kernel: str | None = None, memory_limit: str | None = None) -> list[str]:
    """The command Jupyter runs: this interpreter's supervisor, told which child to run."""
    argv = [sys.executable, "-m", SUPERVISOR_MODULE, "-f", "{connection_file}"]
    if child_kernel:
        argv += ["--child-kernel", child_kernel]
    if memory_limit:
        argv += ["--memory-limit", memory_limit]
    return argv


def _elastic_metadata(child_kernel: str | None, memory_limit: str | None) -> dict[str, Any]:
    """What `elastic-proxy list` shows, and how an elastic spec is recognised (never wrapped twice)."""
    return {"version": __version__, "child_kernel": child_kernel, "memory_limit": memory_limit}


def python_spec(display_name: str = DISPLAY_NAME, memory_limit: str | None = None) -> dict[str, Any]:
    """Our own spec: the supervisor over this interpreter's ipykernel with the agent."""
    return {
        "argv": supervisor_argv(None, memory_limit),
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {METADATA_KEY: _elastic_metadata(None, memory_limit)},
    }


def wrapped_spec(
    child_name: str,
    child: KernelSpec,
    display_name: str | None = None,
    memory_limit: str | None = None,
) -> dict[str, Any]:
    """A spec that runs ``child_name`` under the supervisor, presented like the child.

    Interrupts are always messages: the supervisor is the process Jupyter would signal, and it
    forwards ``interrupt_request`` to the child the child's own way.
    """
    metadata = {key: value for key, value in child.metadata.items() if key not in UNCOPIED_METADATA}
    metadata[METADATA_KEY] = _elastic_metadata(child_name, memory_limit)
    spec: dict[str, Any] = {
        "argv": supervisor_argv(child_name, memory_limit),
        "display_name": display_name or f"{child.display_name} (elastic)",
        "language": child.language,
        "interrupt_mode": "message",
        "metadata": metadata,
    }
    if child.env:
        spec["env"] = dict(child.env)
    return spec


def elastic_info(spec: KernelSpec | dict[str, Any]) -> dict[str, Any] | None:
    """The elastic-proxy metadata of a spec, or None if the spec does not start our supervisor."""
    metadata = spec.metadata if isinstance(spec, KernelSpec) else spec.get("metadata") or {}
    argv = spec.argv if isinstance(spec, KernelSpec) else spec.get("argv") or []
    info = metadata.get(METADATA_KEY)
    if isinstance(info, dict):
        return info
    if SUPERVISOR_MODULE in argv:
        return {"version": None, "child_kernel": None, "memory_limit": None}
    return None


def install_spec(
    manager: KernelSpecManager,
    spec: dict[str, Any],
    name: str,
    resources_dir: Path | None = None,
    user: bool = False,
    prefix: str | None = None,
) -> str:
    """Write ``spec`` with the resources (logos) of ``resources_dir`` and install it; returns where.

    Without logos of its own, a spec gets ours, so every elastic kernel has an icon. The staging
    directory is a fresh subdirectory of the (0700) temporary one because its mode is copied: a
    system-wide kernelspec must stay readable by every user.
    """
    if not _KERNEL_NAME_RE.match(name):
        raise ValueError(
            f"invalid kernelspec name {name!r}: use ASCII letters, digits, '.', '_' and '-' only"
        )
    with tempfile.TemporaryDirectory() as staging:
        tmp = os.path.join(staging, name)
        if resources_dir is not None:
            shutil.copytree(resources_dir, tmp, ignore=shutil.ignore_patterns("kernel.json"))
        else:
            os.mkdir(tmp)
        for logo in LOGO_FILES:
            if not os.path.exists(os.path.join(tmp, logo)):
                shutil.copyfile(LOGOS_DIR / logo, os.path.join(tmp, logo))
        with open(os.path.join(tmp, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=1)
            f.write("\n")
        return manager.install_kernel_spec(tmp, kernel_name=name, user=user, prefix=prefix)

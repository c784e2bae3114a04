"""A session's name that is the same on every host that opens the same notebook.

jupyter_server (2.0.7+) sets JPY_SESSION_NAME to the notebook's absolute OS path (its root dir
joined with the notebook's API path); older servers set the API path itself. An absolute path
depends on the host (the user's home, the server's root dir), so a kernel moved to another node
would not find its checkpoints. The name used is the path relative to the Jupyter root: the
root given in ELASTIC_PROXY_NOTEBOOK_ROOT, else the root_dir of a Jupyter server of this user
(its jpserver-*.json in the runtime dir) that contains the notebook, else the home directory.
Stdlib only: the supervisor calls this at start and must stay quick to import.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
from collections.abc import Iterable, Mapping

SESSION_ENV = "ELASTIC_PROXY_SESSION"
NOTEBOOK_ENV = "JPY_SESSION_NAME"
ROOT_ENV = "ELASTIC_PROXY_NOTEBOOK_ROOT"


def relative_notebook_path(path: str, roots: Iterable[str]) -> str:
    """`path` relative to the deepest of `roots` that contains it, in POSIX form; a path under
    none of them (or already relative) is returned normalised but otherwise as it is."""
    if not os.path.isabs(path):
        return posixpath.normpath(path.replace(os.sep, "/")).lstrip("/")
    path = os.path.normpath(path)
    best = None
    for root in roots:
        if not root or not os.path.isabs(root):
            continue
        root = os.path.normpath(root)
        if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and (best is None or len(root) > len(best)):
            best = root
    if best is None or path == best:
        return path.replace(os.sep, "/")
    return os.path.relpath(path, best).replace(os.sep, "/")


def server_roots(runtime_dir: str | None = None) -> list[str]:
    """root_dir of the Jupyter servers that announced themselves in the runtime dir."""
    if runtime_dir is None:
        try:
            from jupyter_core.paths import jupyter_runtime_dir

            runtime_dir = jupyter_runtime_dir()
        except Exception:
            return []
    roots = []
    for info_file in glob.glob(os.path.join(runtime_dir, "jpserver-*.json")):
        try:
            with open(info_file, encoding="utf-8") as f:
                root = json.load(f).get("root_dir")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(root, str):
            roots.append(os.path.expanduser(root))
    return roots


def session_from_environment(environ: Mapping[str, str] = os.environ, runtime_dir: str | None = None) -> str:
    """ELASTIC_PROXY_SESSION as given, else JPY_SESSION_NAME relative to the Jupyter root, else ""."""
    explicit = environ.get(SESSION_ENV)
    if explicit:
        return explicit
    notebook = environ.get(NOTEBOOK_ENV)
    if not notebook:
        return ""
    if not os.path.isabs(notebook):
        return relative_notebook_path(notebook, ())
    configured = environ.get(ROOT_ENV)
    candidates = [[os.path.expanduser(configured)]] if configured else [server_roots(runtime_dir),
                                                                         [environ.get("HOME", "")]]
    for roots in candidates:
        relative = relative_notebook_path(notebook, roots)
        if not relative.startswith("/"):
            return relative
    return relative_notebook_path(notebook, ())

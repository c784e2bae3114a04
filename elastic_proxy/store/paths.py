"""Where the store lives and how a session name becomes a safe directory name."""

from __future__ import annotations

import os
import re

import blake3
from jupyter_core.paths import jupyter_data_dir

STORE_ENV = "ELASTIC_PROXY_STORE"
SECRET_ENV = "ELASTIC_PROXY_SECRET_FILE"
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SLUG_MAX = 48


def product_data_dir() -> str:
    return os.path.join(jupyter_data_dir(), "elastic-proxy")


def default_root() -> str:
    """Under the Jupyter data dir, never next to the notebook (where it would end up in git)."""
    return os.path.join(product_data_dir(), "sessions")


def resolve_root(root: str | None) -> str:
    """The argument, else $ELASTIC_PROXY_STORE, else the default under the Jupyter data dir."""
    chosen = root or os.environ.get(STORE_ENV) or default_root()
    return chosen if "://" in chosen else os.path.abspath(os.path.expanduser(chosen))


def secret_path() -> str:
    return os.environ.get(SECRET_ENV) or os.path.join(product_data_dir(), "secret")


def session_key(name: str) -> str:
    """A readable slug of the session name plus a short hash of all of it.

    The slug keeps `checkpoints list` readable; the hash keeps two names that slug alike apart
    and makes any string (slashes, dots, unicode) a safe single path component.
    """
    slug = _SLUG_UNSAFE.sub("-", name).strip("-.")[-_SLUG_MAX:].strip("-.") or "session"
    return f"{slug}-{blake3.blake3(name.encode('utf-8')).hexdigest()[:10]}"

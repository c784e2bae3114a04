"""The per-user secret that signs manifests (HMAC-SHA256).

Created once, 32 random bytes, file 0600 in a 0700 dir. A secret that others can read could be
used to forge a manifest that we would then unpickle, so a readable one is refused.

Every host that restores a session must hold the same secret. A cluster provides it either as a
file ($ELASTIC_PROXY_SECRET_FILE, e.g. a Kubernetes secret volume with defaultMode 0400: 32 raw
bytes, or 64 hex digits as `openssl rand -hex 32` writes them), or in $ELASTIC_PROXY_SECRET (64
hex digits, e.g. from a secretKeyRef), which wins over any file: a pod whose fsGroup makes
mounted secrets group-readable cannot pass the file check.
"""

from __future__ import annotations

import os
import secrets
import stat

from .errors import StoreError
from .paths import secret_path

SECRET_BYTES = 32
SECRET_VALUE_ENV = "ELASTIC_PROXY_SECRET"
_cache: dict[str, bytes] = {}


def load_secret(path: str | None = None) -> bytes:
    """The secret of `path`, else of $ELASTIC_PROXY_SECRET, else of the default file (made if missing)."""
    value = os.environ.get(SECRET_VALUE_ENV)
    if path is None and value:
        return parse_secret(value.encode("ascii", "replace"), f"${SECRET_VALUE_ENV}")
    path = path or secret_path()
    if path not in _cache:
        if not os.path.exists(path):
            _create(path)
        _cache[path] = _read(path)
    return _cache[path]


def _create(path: str) -> None:
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and never replaces a secret another process just created
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _read(path: str) -> bytes:
    mode = os.stat(path).st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise StoreError(f"the secret {path} is readable by other users; run: chmod 600 {path}")
    with open(path, "rb") as f:
        return parse_secret(f.read(), path)


def parse_secret(data: bytes, where: str) -> bytes:
    """32 raw bytes, or their 64 hex digits (surrounding whitespace ignored). The error never
    shows the value."""
    if len(data) == SECRET_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * SECRET_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise StoreError(f"the secret in {where} is neither {SECRET_BYTES} bytes nor {2 * SECRET_BYTES} hex digits; "
                     "give it a new one (older checkpoints then no longer verify)")

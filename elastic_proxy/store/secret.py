"""The per-user secret that signs manifests (HMAC-SHA256).

Created once, 32 random bytes, file 0600 in a 0700 dir. A secret that others can read could be
used to forge a manifest that we would then unpickle, so a readable one is refused.
"""

from __future__ import annotations

import os
import secrets
import stat

from .errors import StoreError
from .paths import secret_path

SECRET_BYTES = 32
_cache: dict[str, bytes] = {}


def load_secret(path: str | None = None) -> bytes:
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
        data = f.read()
    if len(data) != SECRET_BYTES:
        raise StoreError(f"the secret {path} is not {SECRET_BYTES} bytes long; delete it to make a new one "
                         "(older checkpoints then no longer verify)")
    return data

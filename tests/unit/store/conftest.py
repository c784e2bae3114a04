from __future__ import annotations

import uuid

import pytest

from elastic_proxy.store import Store, open_store


@pytest.fixture(autouse=True)
def secret_file(tmp_path, monkeypatch):
    """Every test gets its own secret, never the user's real one."""
    path = tmp_path / "secret-dir" / "secret"
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(path))
    monkeypatch.delenv("ELASTIC_PROXY_STORE", raising=False)
    return path


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def store(root) -> Store:
    return open_store("notebooks/analysis.ipynb", root=root)


@pytest.fixture
def memory_root():
    import fsspec

    url = f"memory://elastic-proxy-test-{uuid.uuid4().hex}"
    yield url
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def commit_groups(store: Store, groups: dict, **extra) -> int:
    """Put each group and commit a manifest naming them, as the agent does."""
    refs = {gid: store.put_group(objs).to_json() for gid, objs in groups.items()}
    return store.commit({"groups": refs, **extra})


def load_all(store: Store, generation: int | None = None) -> dict:
    manifest = store.latest() if generation is None else store.read_manifest(generation)
    assert manifest is not None and manifest.valid, manifest and manifest.problem
    out: dict = {}
    for ref in manifest.groups().values():
        if ref is not None:
            out.update(store.load_group(ref))
    return out

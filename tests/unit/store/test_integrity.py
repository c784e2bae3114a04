"""Corrupted blobs, tampered, unsigned and foreign manifests: never unpickled, always reported."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from elastic_proxy.store import IntegrityError, open_store
from elastic_proxy.store.manifest import TAMPERED

from .conftest import commit_groups, load_all
from .objects import Marker


def blob_file(store, address: str) -> str:
    return os.path.join(store.root, "blobs", address[:2], address)


def flip_byte(path: str, offset: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def two_generations(store, tmp_path):
    """Gen 1 and gen 2 each hold a marker object and an array; gen 2's array differs."""
    array = np.random.default_rng(0).standard_normal(300_000)
    commit_groups(store, {"g": {"m": Marker(str(tmp_path / "marker1")), "a": array}})
    array = array.copy()
    array[0] = 99.0
    commit_groups(store, {"g": {"m": Marker(str(tmp_path / "marker2")), "a": array}})
    return store.read_manifest(2).groups()["g"]


@pytest.mark.parametrize("where", ["chunk", "stream"])
def test_flipped_byte_raises_and_nothing_is_unpickled(store, tmp_path, where):
    ref = two_generations(store, tmp_path)
    address = ref.buffers[0].chunks[0] if where == "chunk" else ref.stream
    flip_byte(blob_file(store, address), offset=17)
    with pytest.raises(IntegrityError, match=address):
        store.load_group(ref)
    assert not (tmp_path / "marker2").exists()
    latest = store.latest()
    problems = store.verify(latest)
    assert problems and address in problems[0]
    assert not latest.valid
    previous = store.read_manifest(1)
    assert store.verify(previous) == []
    loaded = load_all(store, 1)
    assert (tmp_path / "marker1").exists() and loaded["m"] == str(tmp_path / "marker1")


def test_truncated_and_missing_blobs_are_integrity_errors(store, tmp_path):
    ref = two_generations(store, tmp_path)
    path = blob_file(store, ref.buffers[0].chunks[0])
    os.truncate(path, 100)
    with pytest.raises(IntegrityError, match="truncated"):
        store.load_group(ref)
    os.unlink(path)
    with pytest.raises(IntegrityError, match="missing blob"):
        store.load_group(ref)
    listed = store.generations(check_blobs=True)
    assert [m.generation for m in listed] == [2, 1]
    assert listed[0].problem == f"missing blob {ref.buffers[0].chunks[0]}" and listed[1].valid
    assert not (tmp_path / "marker2").exists()


def rewrite_manifest(manifest_path: str, change) -> None:
    with open(manifest_path) as f:
        doc = json.load(f)
    change(doc)
    with open(manifest_path, "w") as f:
        json.dump(doc, f)


def test_tampered_manifest_is_skipped_and_reported(store, tmp_path):
    two_generations(store, tmp_path)
    newest = store.latest()
    rewrite_manifest(newest.path, lambda doc: doc.update(execution_count=7))
    listed = store.generations()
    assert listed[0].generation == 2 and not listed[0].valid and listed[0].problem == TAMPERED
    assert store.latest().generation == 1
    with pytest.raises(IntegrityError, match="not valid"):
        listed[0].groups()
    assert load_all(store)["m"] == str(tmp_path / "marker1")
    assert not (tmp_path / "marker2").exists()


def test_unsigned_manifest_is_skipped_and_reported(store, tmp_path):
    two_generations(store, tmp_path)
    rewrite_manifest(store.latest().path, lambda doc: doc.pop("signature"))
    listed = store.generations()
    assert listed[0].problem == "unsigned (no signature)"
    assert store.latest().generation == 1


def test_manifest_signed_with_another_secret_does_not_verify(root, tmp_path, monkeypatch):
    mallory_secret = tmp_path / "mallory" / "secret"
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(mallory_secret))
    mallory = open_store("nb", root=root)
    commit_groups(mallory, {"g": {"m": Marker(str(tmp_path / "mallory-marker"))}})
    monkeypatch.setenv("ELASTIC_PROXY_SECRET_FILE", str(tmp_path / "mine" / "secret"))
    mine = open_store("nb", root=root)
    assert mine.latest() is None
    [listed] = mine.generations()
    assert listed.problem == TAMPERED
    assert not (tmp_path / "mallory-marker").exists()


def test_unreadable_json_and_foreign_session_and_renamed_manifests(store, tmp_path, root):
    two_generations(store, tmp_path)
    manifests = os.path.dirname(store.latest().path)
    with open(os.path.join(manifests, "000000000003-0000abcd.json"), "w") as f:
        f.write("{not json")
    other = open_store("another notebook", root=root)
    commit_groups(other, {"g": {"v": 1}})
    shutil.copyfile(other.latest().path, os.path.join(manifests, "000000000004-0000abcd.json"))
    shutil.copyfile(store.read_manifest(1).path, os.path.join(manifests, "000000000005-0000abcd.json"))
    problems = {m.generation: m.problem for m in store.generations()}
    assert problems[3].startswith("unreadable JSON")
    assert problems[4] == "belongs to another session ('another notebook')"
    assert problems[5] == "file name says generation 5, manifest says 1"
    assert problems[2] is None and problems[1] is None
    assert store.latest().generation == 2
    assert store.commit({"groups": {}}) == 6


def test_malicious_group_reference_cannot_escape_the_blob_dir(store):
    with pytest.raises(IntegrityError, match="not a blob address"):
        store.load_group({"names": ["x"], "pickler": "cloudpickle", "stream": "../../secret",
                          "stream_size": 1, "chunk_size": 1, "buffers": []})

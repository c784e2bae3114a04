"""Manifest signing and naming: pure logic."""

from __future__ import annotations

import json

import pytest

from elastic_proxy.store.manifest import (
    TAMPERED,
    build_document,
    canonical,
    check_document,
    manifest_name,
    parse_manifest_name,
)

SECRET = b"k" * 32


def build(body=None, generation=3, secret=SECRET):
    return build_document(body or {"groups": {}, "cells": ["x = 1"]}, session="nb", generation=generation,
                          parent=2, created=1700000000.25, secret=secret)


def test_signed_document_verifies_and_carries_store_fields():
    doc, problem = check_document(build(), secret=SECRET, session="nb", generation=3)
    assert problem is None
    assert {k: doc[k] for k in ("format", "session", "generation", "parent", "created")} == {
        "format": 1, "session": "nb", "generation": 3, "parent": 2, "created": 1700000000.25}
    assert len(doc["signature"]) == 64


def test_signature_covers_every_field_but_itself():
    for key, value in [("cells", ["x = 2"]), ("parent", 1), ("created", 1.0), ("extra", True)]:
        doc = json.loads(build())
        doc[key] = value
        _, problem = check_document(json.dumps(doc).encode(), secret=SECRET, session="nb", generation=3)
        assert problem == TAMPERED, key


def test_key_order_and_whitespace_do_not_matter():
    doc = json.loads(build())
    reordered = json.dumps(dict(reversed(list(doc.items()))), indent=2).encode()
    assert check_document(reordered, secret=SECRET, session="nb", generation=3)[1] is None
    assert canonical(doc) == canonical(json.loads(reordered))


def test_other_secret_and_wrong_session_are_rejected():
    assert check_document(build(secret=b"o" * 32), secret=SECRET, session="nb", generation=3)[1] == TAMPERED
    assert "another session" in check_document(build(), secret=SECRET, session="other", generation=3)[1]


def test_body_cannot_set_store_fields_or_hold_non_json():
    with pytest.raises(ValueError, match="signature"):
        build({"signature": "forged"})
    with pytest.raises(ValueError):
        build({"x": float("nan")})
    with pytest.raises(TypeError):
        build({"x": object()})


def test_names_sort_by_generation_and_parse_back():
    names = [manifest_name(g) for g in (10, 2, 100, 2)]
    assert [parse_manifest_name(n) for n in sorted(names)] == [2, 2, 10, 100]
    assert names[1] != names[3]
    assert parse_manifest_name(".tmp-000000000002-ab.json") is None
    assert parse_manifest_name("000000000002-abcd.json") is None

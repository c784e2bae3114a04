"""Pure logic behind the S3 store: host-independent session names, concurrent-writer detection,
storage options, the blob cache's self-check."""

from __future__ import annotations

import json
import os

import blake3
import pytest

from elastic_proxy.session_identity import relative_notebook_path, session_from_environment
from elastic_proxy.store.cache import BlobCache
from elastic_proxy.store.manifest import Manifest
from elastic_proxy.store.remote import DEFAULT_RETRIES, storage_options_for
from elastic_proxy.store.writers import conflict_message, find_conflict

pytestmark = pytest.mark.s3


def test_two_hosts_with_different_homes_name_the_notebook_alike(tmp_path):
    a = {"JPY_SESSION_NAME": "/home/alice/work/analysis.ipynb", "HOME": "/home/alice"}
    b = {"JPY_SESSION_NAME": "/users/b/bob/work/analysis.ipynb", "HOME": "/users/b/bob"}
    empty = str(tmp_path)  # a runtime dir without Jupyter servers
    assert session_from_environment(a, empty) == session_from_environment(b, empty) == "work/analysis.ipynb"


def test_the_root_of_a_running_jupyter_server_wins_over_home(tmp_path):
    (tmp_path / "jpserver-123.json").write_text(json.dumps({"root_dir": "/srv/notebooks"}))
    env = {"JPY_SESSION_NAME": "/srv/notebooks/team/x.ipynb", "HOME": "/home/u"}
    assert session_from_environment(env, str(tmp_path)) == "team/x.ipynb"


def test_a_configured_root_wins_and_explicit_names_are_kept(tmp_path):
    env = {"JPY_SESSION_NAME": "/data/u1/proj/x.ipynb", "HOME": "/home/u1",
           "ELASTIC_PROXY_NOTEBOOK_ROOT": "/data/u1"}
    assert session_from_environment(env, str(tmp_path)) == "proj/x.ipynb"
    assert session_from_environment({**env, "ELASTIC_PROXY_SESSION": "/my/own"}, str(tmp_path)) == "/my/own"
    assert session_from_environment({"JPY_SESSION_NAME": "proj/./x.ipynb"}, str(tmp_path)) == "proj/x.ipynb"
    assert session_from_environment({}, str(tmp_path)) == ""


def test_paths_outside_every_root_stay_absolute():
    assert relative_notebook_path("/opt/x.ipynb", ["/home/u"]) == "/opt/x.ipynb"
    assert relative_notebook_path("/home/user2/x.ipynb", ["/home/u"]) == "/home/user2/x.ipynb"
    assert relative_notebook_path("/home/u/a/x.ipynb", ["/home/u", "/home/u/a"]) == "x.ipynb"


def _manifest(generation: int, writer: str | None, valid: bool = True) -> Manifest:
    doc = {"generation": generation, "created": 100.0}
    if writer is not None:
        doc["writer"] = {"id": writer, "host": f"host-{writer}", "pid": 7}
    return Manifest(generation, f"m{generation}", doc, valid, None if valid else "tampered")


def test_another_writers_manifest_above_the_base_is_a_conflict():
    newest_first = [_manifest(7, "b"), _manifest(6, "a"), _manifest(5, "a")]
    assert find_conflict(newest_first, "a", base=5).generation == 7
    assert find_conflict(newest_first, "b", base=5) is None  # b's own newest commit checked below it
    assert find_conflict(newest_first, "a", base=7) is None


def test_our_own_newer_commit_ends_the_search_and_invalid_ones_are_ignored():
    newest_first = [_manifest(8, "a"), _manifest(7, "b"), _manifest(6, "a")]
    assert find_conflict(newest_first, "a", base=5) is None
    forged = [_manifest(9, "z", valid=False), _manifest(8, "a")]
    assert find_conflict(forged, "a", base=5) is None


def test_the_conflict_message_says_who_and_what_to_do():
    text = conflict_message("nb.ipynb", _manifest(7, "b"), 5, now=160.0)
    assert "host-b" in text and "generation 7" in text and "60 s ago" in text and "--session" in text


def test_s3_gets_botocore_standard_retries_unless_aws_settings_choose(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    assert storage_options_for("s3://b/p", None)["config_kwargs"]["retries"] == DEFAULT_RETRIES
    assert storage_options_for("memory://x", None) == {}
    given = {"config_kwargs": {"retries": {"max_attempts": 2}}}
    assert storage_options_for("s3://b/p", given)["config_kwargs"]["retries"] == {"max_attempts": 2}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert "config_kwargs" not in storage_options_for("s3://b/p", None)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    (tmp_path / "config").write_text("[default]\nretry_mode = adaptive\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    assert "config_kwargs" not in storage_options_for("s3://b/p", None)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_cache_entry_is_evicted_not_returned(tmp_path, damage):
    cache = BlobCache(str(tmp_path))
    data = os.urandom(4096)
    address = blake3.blake3(data).hexdigest()
    cache.put(address, data)
    view = memoryview(bytearray(len(data)))
    assert cache.read_into(address, view) and bytes(view) == data and cache.read(address) == data
    path = cache.path(address)
    raw = bytearray(data)
    if damage == "flip":
        raw[100] ^= 1
    elif damage == "truncate":
        raw = raw[:-1]
    else:
        raw = bytearray()
    with open(path, "wb") as f:
        f.write(raw)
    assert not cache.read_into(address, memoryview(bytearray(len(data))))
    assert not os.path.exists(path) and cache.evicted == 1
    cache.put(address, data)
    with open(path, "r+b") as f:
        f.write(bytes([data[0] ^ 0xFF]))  # a byte that differs (a fixed b"\0" did not, 1 time in 256)
    assert cache.read(address) is None and not os.path.exists(path)


def test_a_cluster_secret_comes_as_raw_bytes_hex_text_or_an_environment_variable(tmp_path, monkeypatch):
    from elastic_proxy.store.errors import StoreError
    from elastic_proxy.store.secret import load_secret, parse_secret

    raw = os.urandom(32)
    assert parse_secret(raw, "f") == raw
    assert parse_secret(raw.hex().encode() + b"\n", "f") == raw
    with pytest.raises(StoreError) as bad:
        parse_secret(b"not-a-secret-" * 3, "f")
    assert "not-a-secret" not in str(bad.value)
    hex_file = tmp_path / "mounted"
    hex_file.write_text(raw.hex() + "\n")
    hex_file.chmod(0o400)
    assert load_secret(str(hex_file)) == raw
    other = os.urandom(32)
    monkeypatch.setenv("ELASTIC_PROXY_SECRET", other.hex())
    assert load_secret() == other
    assert load_secret(str(hex_file)) == raw  # an explicit file still wins
    monkeypatch.setenv("ELASTIC_PROXY_SECRET", "short")
    with pytest.raises(StoreError):
        load_secret()


class _RecordingFs:
    """A synchronous stand-in filesystem: records calls, fails where told (unit tests of the windows)."""

    async_impl = False

    def __init__(self, fail: dict[str, Exception] | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail = dict(fail or {})

    def cat_file(self, path: str) -> bytes:
        self.calls.append(("cat", path))
        if path in self.fail:
            raise self.fail[path]
        return path.encode()

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        assert mode == "create"
        self.calls.append(("put", path))
        if path in self.fail:
            raise self.fail[path]


def test_the_prefetcher_reads_ahead_in_plan_order_within_its_window():
    from elastic_proxy.store.remote import Prefetcher

    fs = _RecordingFs()
    ahead = Prefetcher(fs, window_blobs=3, window_bytes=1 << 30)
    ahead.plan([(f"b{i}", 10) for i in range(6)])
    assert ahead.fetch("b0") == b"b0"
    assert [p for _, p in fs.calls] == ["b0", "b1", "b2", "b3"]  # b0 read, three more in flight
    assert ahead.fetch("b5") == b"b5"  # out of order: fetched on demand, the window stays
    assert ahead.fetch("b1") == b"b1" and ahead.bytes_fetched == 6
    ahead.plan([("c0", 10)])  # a new plan drops what the old one had in flight
    assert ahead.fetch("c0") == b"c0" and fs.calls[-1] == ("cat", "c0")


def test_the_prefetcher_bounds_bytes_in_flight_and_reports_errors_as_oserror():
    from elastic_proxy.store.remote import Prefetcher

    fs = _RecordingFs(fail={"bad": RuntimeError("HTTP 500")})
    ahead = Prefetcher(fs, window_blobs=10, window_bytes=25)
    ahead.plan([("a", 10), ("b", 10), ("c", 10), ("d", 10)])
    ahead.fetch("a")
    assert len(fs.calls) == 4  # a, b, c start (checked before each start: 0, 10, 20 < 25), d once a is taken
    with pytest.raises(OSError, match="HTTP 500"):
        ahead.fetch("bad")
    with pytest.raises(FileNotFoundError):
        Prefetcher(_RecordingFs(fail={"gone": FileNotFoundError("gone")})).fetch("gone")


def test_the_uploader_ignores_objects_that_exist_and_raises_the_first_failure_at_flush():
    from elastic_proxy.store.remote import Uploader

    fs = _RecordingFs(fail={"same": FileExistsError("same"), "down": ConnectionError("refused")})
    up = Uploader(fs, window=2)
    up.put("one", b"1")
    up.put("same", b"2")
    up.flush()
    up.put("down", b"3")
    with pytest.raises(OSError, match="refused"):
        up.flush()
    up.flush()  # nothing left after a failure
    assert [p for _, p in fs.calls] == ["one", "same", "down"]

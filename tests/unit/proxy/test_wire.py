"""Wire frames: signatures, replays, malformed input, re-signing."""

from __future__ import annotations

import json

import pytest
from jupyter_client.session import Session

from elastic_proxy.proxy.wire import DELIMITER, ReplayGuard, Signer, WireError, new_message, parse


def session_frames(key: bytes, scheme: str = "hmac-sha256", buffers=None) -> tuple[Session, list[bytes]]:
    session = Session(key=key, signature_scheme=scheme)
    msg = session.msg("execute_request", {"code": "1"})
    return session, [b"ident", *session.serialize(msg, ident=None), *(buffers or [])]


@pytest.mark.parametrize("scheme", ["hmac-sha256", "hmac-sha512", "hmac-md5"])
def test_messages_signed_by_jupyter_client_verify(scheme):
    _, frames = session_frames(b"k", scheme)
    msg = parse(frames, Signer(b"k", scheme))
    assert msg.msg_type == "execute_request" and msg.idents == [b"ident"]
    assert msg.content == {"code": "1"}


def test_empty_key_means_unsigned():
    _, frames = session_frames(b"")
    assert frames[frames.index(DELIMITER) + 1] == b""
    assert parse(frames, Signer(b"")).msg_type == "execute_request"


def test_wrong_key_is_refused():
    _, frames = session_frames(b"right")
    with pytest.raises(WireError, match="invalid signature"):
        parse(frames, Signer(b"wrong"))


def test_tampered_content_is_refused():
    _, frames = session_frames(b"k")
    frames[-1] = b'{"code": "import os; os.system(\'rm -rf ~\')"}'
    with pytest.raises(WireError, match="invalid signature"):
        parse(frames, Signer(b"k"))


def test_replayed_message_is_refused():
    _, frames = session_frames(b"k")
    guard = ReplayGuard()
    parse(frames, Signer(b"k"), guard)
    with pytest.raises(WireError, match="duplicate signature"):
        parse(frames, Signer(b"k"), guard)


def test_replay_guard_stays_bounded():
    guard = ReplayGuard(size=100)
    for i in range(1000):
        assert guard.check_and_add(str(i).encode())
    assert len(guard._seen) <= 101


@pytest.mark.parametrize("frames, reason", [
    ([b"a", b"b"], "delimiter"),
    ([DELIMITER, b"", b"{}"], "too few frames"),
    ([DELIMITER, b"", b"not json", b"{}", b"{}", b"{}"], "malformed header"),
    ([DELIMITER, b"", b"[]", b"{}", b"{}", b"{}"], "malformed header"),
    ([DELIMITER, b"", b'{"msg_type": "x"}', b"{}", b"{}", b"{}"], "msg_id"),
])
def test_malformed_frames_give_a_specific_error(frames, reason):
    with pytest.raises(WireError, match=reason):
        parse(frames, Signer(b""))


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(WireError, match="unsupported signature scheme"):
        Signer(b"k", "rsa-sha256")


def test_resigned_message_verifies_with_the_other_key_and_buffers_are_not_signed():
    _, frames = session_frames(b"client", buffers=[b"\x00" * 10])
    msg = parse(frames, Signer(b"client"))
    assert msg.buffers == [b"\x00" * 10]
    out = msg.to_frames(Signer(b"child"))
    child_session = Session(key=b"child")
    idents, rest = child_session.feed_identities(out)
    decoded = child_session.deserialize(rest)
    assert idents == [b"ident"] and decoded["content"] == {"code": "1"}
    assert [bytes(b) for b in decoded["buffers"]] == [b"\x00" * 10]


def test_new_message_is_a_valid_reply_for_jupyter_client():
    _, frames = session_frames(b"k")
    req = parse(frames, Signer(b"k"))
    reply = new_message("execute_reply", {"status": "ok"}, parent=req, session="s", idents=req.idents)
    session = Session(key=b"k")
    _, rest = session.feed_identities(reply.to_frames(Signer(b"k")))
    decoded = session.deserialize(rest)
    assert decoded["parent_header"]["msg_id"] == req.msg_id
    assert decoded["header"]["msg_type"] == "execute_reply"


def test_with_content_reencodes_only_the_content():
    _, frames = session_frames(b"k")
    msg = parse(frames, Signer(b"k"))
    changed = msg.with_content({"code": "2"})
    assert changed.frames[:3] == msg.frames[:3] and changed.content == {"code": "2"}
    assert parse([*changed.to_frames(Signer(b"k"))], Signer(b"k")).content == {"code": "2"}


def _signed(content: bytes, key: bytes = b"k") -> list[bytes]:
    """A message whose content frame is exactly `content` (what a client other than Python may send)."""
    session = Session(key=key)
    header = session.msg_header("execute_result")
    frames = [session.pack(header), b"{}", b"{}", content]
    return [DELIMITER, Signer(key).sign(frames), *frames]


def test_an_integer_beyond_64_bits_survives_a_count_rewrite():
    big = 2**70 + 1  # orjson, which decodes headers, would read it as a float and lose the + 1
    msg = parse(_signed(b'{"execution_count": 1, "data": {"application/json": {"n": %d}}}' % big), Signer(b"k"))
    changed = msg.with_content({"execution_count": 7})
    sent = parse(changed.to_frames(Signer(b"k")), Signer(b"k")).frames[3]
    assert json.loads(sent) == {"execution_count": 7, "data": {"application/json": {"n": big}}}


def test_content_orjson_refuses_is_still_read():
    msg = parse(_signed(b'{"value": NaN}'), Signer(b"k"))
    assert msg.content["value"] != msg.content["value"]  # NaN, as Python's json reads it


def test_malformed_content_is_a_wire_error():
    msg = parse(_signed(b'{"value": '), Signer(b"k"))
    with pytest.raises(WireError, match="malformed content"):
        msg.content.get("value")


def test_large_frames_received_as_memoryviews_are_parsed_and_resigned():
    """The pumps hand over frames of 64 KiB and more as memoryviews of libzmq's buffers."""
    big = b'{"execution_count": 1, "data": {"text/plain": "' + b"x" * (1 << 20) + b'"}}'
    raw = _signed(big)
    raw[-1] = memoryview(big)
    msg = parse(raw, Signer(b"k"))
    assert msg.content["data"]["text/plain"] == "x" * (1 << 20)
    changed = msg.with_content({"execution_count": 2})
    assert parse(changed.to_frames(Signer(b"k2")), Signer(b"k2")).content["execution_count"] == 2
    assert parse([*raw, memoryview(b"buffer")], Signer(b"k")).buffers == [b"buffer"]

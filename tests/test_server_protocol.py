"""Request validation and access rules of the reward server (no model needed)."""

from __future__ import annotations

import base64

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'firm-lite[serve]'")

from firm_lite.errors import UserError
from firm_lite.records import ModeScore
from firm_lite.server.access import check_bind, is_loopback, token_matches
from firm_lite.server.app import ServeConfig
from firm_lite.server.protocol import (
    RequestRefused,
    decode_base64_image,
    parse_json_request,
    parse_reference_request,
    reference_response,
)


def body(n: int = 2, **over: object) -> dict:
    out = {"images": [b"e"] * n, "ref_images": [b"s"] * n, "prompts": ["p"] * n,
           "metadatas": [{"requirement": "r"}] * n}
    out.update(over)
    return out


def refused(payload: object, max_items: int = 64) -> RequestRefused:
    with pytest.raises(RequestRefused) as err:
        parse_reference_request(payload, max_items)
    assert err.value.status == 400
    return err.value


def test_reference_request_becomes_pairs_in_order() -> None:
    pairs = parse_reference_request(body(2, prompts=["a", "b"], extra_key="ignored"), 64)
    assert [(p.id, p.instruction, p.requirement, p.source, p.edited) for p in pairs] == [
        ("0", "a", "r", b"s", b"e"), ("1", "b", "r", b"s", b"e")]
    # metadatas may be missing, empty or None, as with the reference
    for meta in ({}, {"metadatas": []}, {"metadatas": None}):
        payload = body(1)
        del payload["metadatas"]
        payload.update(meta)
        assert parse_reference_request(payload, 64)[0].requirement == ""


def test_mismatched_lengths_name_every_list() -> None:
    msg = refused(body(3, prompts=["a", "b"])).message
    assert "images=3" in msg and "prompts=2" in msg
    assert "metadatas=1" in refused(body(3, metadatas=[{}])).message


@pytest.mark.parametrize(("payload", "needle"), [
    ([1, 2], "pickled dict"),
    ({"images": [b"e"], "prompts": ["p"]}, "missing key 'ref_images'"),
    (body(1, images=b"e"), "images must be a list"),
    (body(2, images=[b"e", "e"]), "images[1] is str"),
    (body(1, prompts=[None]), "prompts[0] is NoneType"),
    (body(1, metadatas=["x"]), "metadatas[0] is str"),
    (body(1, metadatas=[{"requirement": 3}]), "metadatas[0].requirement is int"),
])
def test_bad_shapes_are_400_naming_the_field(payload: object, needle: str) -> None:
    assert needle in refused(payload).message


def test_item_limit() -> None:
    assert "limit of 4" in refused(body(5), max_items=4).message


def test_parse_failure_is_zero_on_the_wire_and_listed() -> None:
    ok = ModeScore(4, 3.9, None, "fine", True, "{...}")
    bad = ModeScore(None, None, None, None, False, "garbage")
    assert reference_response([ok, bad, ok]) == {"scores": [4, 0, 4], "reasonings": ["fine", "", "fine"],
                                                  "parse_failures": [1]}


def test_json_request() -> None:
    b64 = base64.b64encode(b"img").decode()
    pairs = parse_json_request({"pairs": [{"id": "a", "source": b64, "edited": "data:image/jpeg;base64," + b64,
                                           "instruction": "x"}]}, 8)
    assert (pairs[0].id, pairs[0].source, pairs[0].edited, pairs[0].requirement) == ("a", b"img", b"img", "")
    with pytest.raises(RequestRefused, match="unknown key"):
        parse_json_request({"pairs": [{"source": b64, "edited": b64, "instruction": "x", "prompt": "y"}]}, 8)
    with pytest.raises(RequestRefused, match="missing 'edited'"):
        parse_json_request({"pairs": [{"source": b64, "instruction": "x"}]}, 8)
    with pytest.raises(RequestRefused, match="not valid base64"):
        decode_base64_image("%%%", "pairs[0].source")


def test_bind_policy() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))
    assert "loopback only" in check_bind("127.0.0.1", None, False)
    with pytest.raises(UserError, match="--token"):
        check_bind("0.0.0.0", None, False)
    assert "WARNING no authentication" in check_bind("0.0.0.0", None, True)
    assert "token required" in check_bind("0.0.0.0", "s3cret", False)
    with pytest.raises(UserError, match="contradict"):
        check_bind("0.0.0.0", "s3cret", True)
    with pytest.raises(UserError, match="empty"):
        check_bind("0.0.0.0", "  ", False)


def test_token_forms() -> None:
    basic = b"Basic " + base64.b64encode(b"firm:s3cret")
    assert token_matches(b"Bearer s3cret", "s3cret") and token_matches(basic, "s3cret")
    for header in (None, b"", b"Bearer wrong", b"s3cret", b"Basic !!", b"Digest s3cret",
                   b"Basic " + base64.b64encode(b"s3cret:nope")):
        assert not token_matches(header, "s3cret")


def test_config_checks() -> None:
    with pytest.raises(UserError, match="max-queue"):
        ServeConfig(max_queue=10, max_items=64)
    assert "token" not in ServeConfig(token="x").public()

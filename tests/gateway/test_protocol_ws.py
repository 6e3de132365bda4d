"""Protocol freshwire.v1 over a real WebSocket (Starlette TestClient, in-memory backend)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jwt
import pytest
from gw_support import SECRET, SUBPROTOCOL, Gateway, recv, token, ver
from starlette.websockets import WebSocketDisconnect

from gateway import errors as E
from gateway.backend import BackendUnavailable
from gateway.backend_memory import MemoryBackend

# -- connecting


def test_connect_accepts_subprotocol_and_query_token(gw: Gateway) -> None:
    with gw.connect() as ws:
        assert ws.accepted_subprotocol == SUBPROTOCOL
        assert gw.ping(ws) == []


def test_connect_accepts_bearer_header(gw: Gateway) -> None:
    headers = {"Authorization": f"Bearer {token(['k'])}"}
    with gw.client.websocket_connect("/ws", subprotocols=[SUBPROTOCOL], headers=headers) as ws:
        assert gw.subscribe(ws, ["k"])["versions"] == {"k": None}


def test_connect_without_subprotocol_still_works(gw: Gateway) -> None:
    with gw.client.websocket_connect(f"/ws?token={token()}") as ws:
        assert ws.accepted_subprotocol is None
        assert gw.ping(ws) == []


def _closed_with(gw: Gateway, path: str, code: int, **kwargs: Any) -> None:
    with pytest.raises(WebSocketDisconnect) as info, gw.client.websocket_connect(path, **kwargs) as ws:
        recv(ws)
    assert info.value.code == code


def _alg_none_token() -> str:
    # "": no key (PyJWT reads it as None, which its types refuse)
    return jwt.encode({"fw_keys": ["*"], "exp": int(time.time()) + 6 * 3600}, "", algorithm="none")


@pytest.mark.parametrize("tok", [
    pytest.param(None, id="missing"),
    pytest.param("not-a-jwt", id="malformed"),
    pytest.param(token(ttl_s=-10), id="expired"),
    pytest.param(jwt.encode({"fw_keys": ["*"], "exp": int(time.time()) + 6 * 3600},
                            "another-secret-of-32-bytes-or-more!!", algorithm="HS256"), id="bad-signature"),
    pytest.param(_alg_none_token(), id="alg-none"),
    pytest.param(jwt.encode({"exp": int(time.time()) + 6 * 3600}, SECRET, algorithm="HS256"), id="no-keys-claim"),
])
def test_connect_bad_token_closes_4001(gw: Gateway, tok: str | None) -> None:
    path = "/ws" if tok is None else f"/ws?token={tok}"
    _closed_with(gw, path, E.CLOSE_AUTH, subprotocols=[SUBPROTOCOL])
    assert not gw.state.hub.sessions


def test_connect_token_expiring_while_open_closes_4001(gw: Gateway) -> None:
    with gw.connect(tok=token(ttl_s=1)) as ws:
        assert gw.subscribe(ws, ["k"])["versions"] == {"k": None}
        with pytest.raises(WebSocketDisconnect) as info:
            recv(ws, timeout_s=3)
        assert info.value.code == E.CLOSE_AUTH


def test_connect_over_capacity_closes_4013(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_connections=1)
    with gw.connect() as first:
        assert gw.ping(first) == []  # registered
        _closed_with(gw, f"/ws?token={token()}", E.CLOSE_OVER_CAPACITY)
        assert gw.ping(first) == []  # the first one is unaffected
    # once the first one is gone there is room again
    gw.wait(lambda: not gw.state.hub.sessions)
    with gw.connect() as again:
        assert gw.ping(again) == []


# -- requests and replies


def test_subscribe_replies_with_versions_watermark_and_id(gw: Gateway) -> None:
    gw.release(ver(5), ["a"])
    gw.release(ver(7), ["b"])
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "id": 42, "keys": ["a", "b", "c"]})
        assert recv(ws) == {"type": "subscribed", "id": 42, "versions": {"a": ver(5), "b": ver(7), "c": None},
                            "watermark": ver(7)}


def test_subscribe_without_id_has_no_id_and_null_watermark(gw: Gateway) -> None:
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "keys": ["a"]})
        assert recv(ws) == {"type": "subscribed", "versions": {"a": None}, "watermark": None}


def test_subscribe_duplicate_keys_are_merged(gw: Gateway) -> None:
    with gw.connect() as ws:
        reply = gw.subscribe(ws, ["a", "a", "b"], since={"c": None})
        assert reply["versions"] == {"a": None, "b": None, "c": None}


def test_subscribe_same_key_twice_is_idempotent(gw: Gateway) -> None:
    gw.release(ver(3), ["a"])
    with gw.connect() as ws:
        assert gw.subscribe(ws, ["a"])["versions"] == {"a": ver(3)}
        assert gw.subscribe(ws, ["a"])["versions"] == {"a": ver(3)}
        assert gw.state.hub.subscriptions == 1


def test_unsubscribe_replies_and_stops_invalidations(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["a", "b"])
        ws.send_json({"op": "unsubscribe", "id": 9, "keys": ["a"]})
        assert recv(ws) == {"type": "unsubscribed", "id": 9, "keys": ["a"]}
        gw.release(ver(1), ["a"])
        gw.release(ver(2), ["b"])
        assert gw.invalidations_until(ws, "b", ver(2)) == [{"b": ver(2)}]


def test_unsubscribe_unknown_key_is_not_an_error(gw: Gateway) -> None:
    with gw.connect() as ws:
        ws.send_json({"op": "unsubscribe", "keys": ["never"]})
        assert recv(ws) == {"type": "unsubscribed", "keys": ["never"]}


def test_ping_replies_pong_with_id(gw: Gateway) -> None:
    with gw.connect() as ws:
        ws.send_json({"op": "ping", "id": 0})
        assert recv(ws) == {"type": "pong", "id": 0}
        ws.send_json({"op": "ping"})
        assert recv(ws) == {"type": "pong"}
        ws.send_json({"op": "ping", "id": 2**53 - 1})
        assert recv(ws) == {"type": "pong", "id": 2**53 - 1}


# -- errors


LONG_KEY = "k" * 257


@pytest.mark.parametrize(("frame", "code", "rid"), [
    ("{not json", E.BAD_JSON, None),
    ("", E.BAD_JSON, None),
    ("[" * 100_000, E.BAD_JSON, None),
    ('{"op":"ping","id":' + "1" * 5000 + "}", E.BAD_JSON, None),  # int too long for Python's json
    ("[]", E.BAD_REQUEST, None),
    ('"ping"', E.BAD_REQUEST, None),
    ('{"id":3}', E.BAD_REQUEST, 3),
    ('{"op":7,"id":3}', E.BAD_REQUEST, 3),
    ('{"op":"ping","id":"3"}', E.BAD_REQUEST, None),
    ('{"op":"ping","id":-1}', E.BAD_REQUEST, None),
    ('{"op":"ping","id":1.5}', E.BAD_REQUEST, None),
    ('{"op":"ping","id":true}', E.BAD_REQUEST, None),
    ('{"op":"ping","id":9007199254740992}', E.BAD_REQUEST, None),
    ('{"op":"subscribe","id":3,"keys":"a"}', E.BAD_REQUEST, 3),
    ('{"op":"subscribe","id":3,"keys":["a"],"since":["a"]}', E.BAD_REQUEST, 3),
    ('{"op":"unsubscribe","id":3,"keys":{"a":1}}', E.BAD_REQUEST, 3),
    ('{"op":"await","id":3}', E.BAD_TOKEN, 3),
    ('{"op":"await","id":3,"token":"fw1:12","timeout_ms":-1}', E.BAD_REQUEST, 3),
    ('{"op":"await","id":3,"token":"nope"}', E.BAD_TOKEN, 3),
    ('{"op":"SUBSCRIBE","id":3}', E.UNKNOWN_OP, 3),
    ('{"op":"subscribe","id":3,"keys":[""]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"keys":["a b"]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"keys":["caf\\u00e9"]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"keys":["a*"]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"keys":[7]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"keys":["a\\n"]}', E.INVALID_KEY, 3),   # `$` would allow a trailing newline
    ('{"op":"subscribe","id":3,"since":{"a\\n":null}}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"since":{"a":"00000000000000ab\\n"}}', E.INVALID_VERSION, 3),
    (json.dumps({"op": "subscribe", "id": 3, "keys": [LONG_KEY]}), E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"since":{"a,b":null}}', E.INVALID_KEY, 3),
    ('{"op":"unsubscribe","id":3,"keys":["a b"]}', E.INVALID_KEY, 3),
    ('{"op":"subscribe","id":3,"since":{"a":"00000000000000AB"}}', E.INVALID_VERSION, 3),
    ('{"op":"subscribe","id":3,"since":{"a":"00ab"}}', E.INVALID_VERSION, 3),
    ('{"op":"subscribe","id":3,"since":{"a":"00000000000000000"}}', E.INVALID_VERSION, 3),
    ('{"op":"subscribe","id":3,"since":{"a":171}}', E.INVALID_VERSION, 3),
])
def test_error_codes_for_bad_frames(gw: Gateway, frame: str, code: str, rid: int | None) -> None:
    with gw.connect() as ws:
        ws.send_text(frame)
        reply = recv(ws)
        assert reply["type"] == "error"
        assert reply["code"] == code
        assert isinstance(reply["message"], str) and reply["message"]
        assert reply.get("id") == rid
        assert gw.ping(ws) == []  # the connection stays open and usable


def test_error_invalid_key_lists_the_bad_keys(gw: Gateway) -> None:
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "id": 1, "keys": ["ok", "not ok", LONG_KEY]})
        reply = recv(ws)
        assert reply["code"] == E.INVALID_KEY
        assert reply["keys"] == ["not ok", LONG_KEY[:256]]
        # nothing of a rejected request is subscribed
        assert gw.subscribe(ws, [])["versions"] == {}
        assert gw.state.hub.subscriptions == 0


def _assert_error(msg: dict[str, Any], code: str, rid: int | None) -> None:
    assert msg["type"] == "error", msg
    assert msg["code"] == code, msg
    assert msg.get("id") == rid, msg


def test_error_too_many_keys_per_request_and_per_connection(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_subscriptions=3)
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "id": 1, "keys": ["a", "b", "c", "d"]})
        _assert_error(recv(ws), E.TOO_MANY_KEYS, 1)
        ws.send_json({"op": "subscribe", "id": 2, "keys": ["a", "b"], "since": {"c": None, "d": None}})
        _assert_error(recv(ws), E.TOO_MANY_KEYS, 2)
        gw.subscribe(ws, ["a", "b"])
        ws.send_json({"op": "subscribe", "id": 3, "keys": ["c", "d"]})
        _assert_error(recv(ws), E.TOO_MANY_KEYS, 3)
        assert gw.state.hub.subscriptions == 2
        # re-subscribing held keys does not count twice; unsubscribing frees room
        assert gw.subscribe(ws, ["a", "b", "c"])["versions"] == {"a": None, "b": None, "c": None}
        ws.send_json({"op": "unsubscribe", "keys": ["a"]})
        assert recv(ws)["type"] == "unsubscribed"
        assert set(gw.subscribe(ws, ["d"])["versions"]) == {"d"}


def test_error_forbidden_per_key_allowed_keys_still_subscribed(gw: Gateway) -> None:
    gw.release(ver(1), ["tenant:1:x", "tenant:10:x"])
    with gw.connect(["tenant:1:*", "exact"]) as ws:
        ws.send_json({"op": "subscribe", "id": 5, "keys": ["tenant:1:x", "tenant:10:x", "exact", "exactly"]})
        err = recv(ws)
        _assert_error(err, E.FORBIDDEN, 5)
        assert err["keys"] == ["tenant:10:x", "exactly"]
        assert recv(ws) == {"type": "subscribed", "id": 5, "versions": {"tenant:1:x": ver(1), "exact": None},
                            "watermark": ver(1)}
        gw.release(ver(2), ["tenant:10:x"])
        gw.release(ver(3), ["tenant:1:x"])
        assert gw.invalidations_until(ws, "tenant:1:x", ver(3)) == [{"tenant:1:x": ver(3)}]


def test_error_forbidden_only_keys_gets_no_subscribed(gw: Gateway) -> None:
    with gw.connect(["a"]) as ws:
        ws.send_json({"op": "subscribe", "id": 5, "keys": ["b"], "since": {"c": None}})
        err = recv(ws)
        _assert_error(err, E.FORBIDDEN, 5)
        assert err["keys"] == ["b", "c"]
        assert gw.ping(ws) == []
        assert gw.state.hub.subscriptions == 0


def test_error_rate_limited_drops_the_message(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_messages_per_s=1.0)  # burst of 2
    with gw.connect() as ws:
        for rid in (1, 2, 3):
            ws.send_json({"op": "ping", "id": rid})
        assert recv(ws) == {"type": "pong", "id": 1}
        assert recv(ws) == {"type": "pong", "id": 2}
        _assert_error(recv(ws), E.RATE_LIMITED, None)


def test_close_4008_after_repeated_rate_limiting(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_messages_per_s=1.0, max_rate_strikes=3)
    with gw.connect() as ws:
        for rid in range(10):
            ws.send_json({"op": "ping", "id": rid})
        codes = []
        with pytest.raises(WebSocketDisconnect) as info:
            while True:
                msg = recv(ws)
                codes.append(msg.get("code", msg["type"]))
        assert info.value.code == E.CLOSE_POLICY
        assert codes == ["pong", "pong", E.RATE_LIMITED, E.RATE_LIMITED, E.RATE_LIMITED]


def test_error_binary_unsupported(gw: Gateway) -> None:
    with gw.connect() as ws:
        ws.send_bytes(b'{"op":"ping","id":1}')
        _assert_error(recv(ws), E.BINARY_UNSUPPORTED, None)
        assert gw.ping(ws) == []


def test_close_4008_binary_frames_count_against_the_rate_limit(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_messages_per_s=1.0, max_rate_strikes=2)
    with gw.connect() as ws:
        for _ in range(10):
            ws.send_bytes(b"x")
        codes = []
        with pytest.raises(WebSocketDisconnect) as info:
            while True:
                codes.append(recv(ws)["code"])
        assert info.value.code == E.CLOSE_POLICY
        assert codes == [E.BINARY_UNSUPPORTED] * 2 + [E.RATE_LIMITED] * 2


class FailingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        if self.failing:
            raise BackendUnavailable("down")
        return await super().read_versions(keys)


def test_error_unavailable_leaves_nothing_subscribed(make_gateway: Callable[..., Gateway]) -> None:
    backend = FailingBackend()
    gw = make_gateway(backend=backend)
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "id": 4, "keys": ["a"]})
        _assert_error(recv(ws), E.UNAVAILABLE, 4)
        assert gw.state.hub.subscriptions == 0
        backend.failing = False
        gw.subscribe(ws, ["b"])
        gw.release(ver(1), ["a"])
        gw.release(ver(2), ["b"])
        assert gw.invalidations_until(ws, "b", ver(2)) == [{"b": ver(2)}]


# -- resume


def test_resume_since_older_gets_invalidate_right_after_subscribed(gw: Gateway) -> None:
    gw.release(ver(5), ["a", "b"])
    with gw.connect() as ws:
        ws.send_json({"op": "subscribe", "id": 1, "keys": ["a"], "since": {"a": ver(3), "b": ver(5)}})
        assert recv(ws) == {"type": "subscribed", "id": 1, "versions": {"a": ver(5), "b": ver(5)},
                            "watermark": ver(5)}
        assert recv(ws) == {"type": "invalidate", "keys": {"a": ver(5)}}
        assert gw.ping(ws) == []


@pytest.mark.parametrize("since", [5, 6])
def test_resume_since_equal_or_newer_gets_no_invalidate(gw: Gateway, since: int) -> None:
    gw.release(ver(5), ["a"])
    with gw.connect() as ws:
        reply = gw.subscribe(ws, [], since={"a": ver(since)})
        assert reply["versions"] == {"a": ver(5)}
        assert gw.ping(ws) == []


def test_resume_since_null_gets_invalidate_when_key_has_a_version(gw: Gateway) -> None:
    gw.release(ver(5), ["a"])
    with gw.connect() as ws:
        gw.subscribe(ws, ["b"], since={"a": None, "b": None})
        assert recv(ws) == {"type": "invalidate", "keys": {"a": ver(5)}}
        assert gw.ping(ws) == []


def test_resume_since_for_key_without_version_gets_no_invalidate(gw: Gateway) -> None:
    with gw.connect() as ws:
        assert gw.subscribe(ws, [], since={"a": ver(1)})["versions"] == {"a": None}
        assert gw.ping(ws) == []


def test_resume_forbidden_since_key_gets_nothing(gw: Gateway) -> None:
    gw.release(ver(5), ["a", "secret"])
    with gw.connect(["a"]) as ws:
        ws.send_json({"op": "subscribe", "id": 1, "since": {"a": ver(1), "secret": ver(1)}})
        _assert_error(recv(ws), E.FORBIDDEN, 1)
        assert gw.subscribe(ws, ["a"], since={"a": ver(1)})["versions"] == {"a": ver(5)}
        assert recv(ws) == {"type": "invalidate", "keys": {"a": ver(5)}}


# -- invalidations


def _check_stream(frames: Sequence[dict[str, str]], subscribed: set[str],
                  start: dict[str, str | None]) -> dict[str, str | None]:
    """Only subscribed keys, versions strictly increasing per key (so never twice); returns the last seen."""
    seen = dict(start)
    for frame in frames:
        assert frame, "empty invalidate"
        for key, version in frame.items():
            assert key in subscribed
            last = seen.get(key)
            assert last is None or version > last, (key, last, version)
            seen[key] = version
    return seen


def test_invalidate_only_subscribed_keys_increasing_never_twice(gw: Gateway) -> None:
    keys = [f"k{i}" for i in range(6)]
    subscribed = set(keys[:4])
    with gw.connect() as ws:
        start = gw.subscribe(ws, sorted(subscribed))["versions"]
        n = 0
        for round_ in range(40):
            n += 1
            batch = [keys[(round_ * 7 + j) % 6] for j in range(1 + round_ % 3)]
            gw.release(ver(n), batch)
            if round_ % 5 == 0:
                gw.release(ver(n), batch)      # the same version again: not advanced, not re-sent
                gw.release(ver(n - 1), batch)  # an older one: not advanced either
        n += 1
        gw.release(ver(n), ["k0"])
        seen = _check_stream(gw.invalidations_until(ws, "k0", ver(n)), subscribed, start)
        assert gw.ping(ws) == []
        assert seen == {k: gw.backend.versions.get(k) for k in sorted(subscribed)}


def test_invalidate_fans_out_to_every_subscriber(gw: Gateway) -> None:
    with gw.connect() as one, gw.connect() as two:
        gw.subscribe(one, ["a", "b"])
        gw.subscribe(two, ["b"])
        gw.release(ver(1), ["a", "b"])
        assert gw.invalidations_until(one, "b", ver(1)) == [{"a": ver(1), "b": ver(1)}]
        assert gw.invalidations_until(two, "b", ver(1)) == [{"b": ver(1)}]


def test_invalidate_truncate_prefix_hits_subscribed_keys_under_it(gw: Gateway) -> None:
    gw.release(ver(1), ["card:1", "user:1"])
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:1", "card:2", "user:1"])
        gw.release(ver(2), prefixes=["card:"])
        assert gw.invalidations_until(ws, "card:1", ver(2)) == [{"card:1": ver(2), "card:2": ver(2)}]
        assert gw.ping(ws) == []
        # a key subscribed after the truncate reports the truncate's version
        assert gw.subscribe(ws, ["card:3"])["versions"] == {"card:3": ver(2)}
        # a key under a truncated prefix still moves forward on its own
        gw.release(ver(3), ["card:1"])
        assert gw.invalidations_until(ws, "card:1", ver(3)) == [{"card:1": ver(3)}]


def test_invalidate_resync_re_reads_missed_versions(gw: Gateway) -> None:
    gw.release(ver(1), ["a", "b"])
    with gw.connect() as ws:
        gw.subscribe(ws, ["a", "b", "c"])
        # versions advanced while the backend's feed was broken: no event, only the stored versions
        assert gw.client.portal is not None
        gw.client.portal.call(lambda: gw.backend.versions.update({"a": ver(4), "c": ver(4)}))
        gw.resync()
        frames = gw.invalidations_until(ws, "c", ver(4))
        assert _check_stream(frames, {"a", "b", "c"}, {"a": ver(1), "b": ver(1)}) == {
            "a": ver(4), "b": ver(1), "c": ver(4)}
        # then the client is told that live delivery lapsed and every key was re-read (#11)
        assert recv(ws) == {"type": "lapse", "reason": "resync", "keys": ["a", "b", "c"], "version": ver(1)}
        gw.resync()  # nothing new: no invalidate, only the lapse
        assert [m["type"] for m in gw.ping(ws)] == ["lapse"]
        assert gw.state.metrics.resyncs._value.get() == 2


class GatedBackend(MemoryBackend):
    """read_versions answers with the versions as they were when the read began, after a gate opens."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = False
        self.gate: asyncio.Event | None = None

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        snapshot = await super().read_versions(keys)
        self.gate = asyncio.Event()
        self.reading = True
        await self.gate.wait()
        self.reading = False
        return snapshot

    def open_gate(self) -> None:
        assert self.gate is not None, "no read has begun"
        self.gate.set()


@pytest.mark.parametrize("since", [None, 1])
def test_subscribe_release_during_slow_read_is_not_lost(make_gateway: Callable[..., Gateway],
                                                        since: int | None) -> None:
    backend = GatedBackend()
    gw = make_gateway(backend=backend)
    gw.release(ver(1), ["a"])
    with gw.connect() as ws:
        body: dict[str, Any] = {"op": "subscribe", "id": 1, "keys": ["a"]}
        if since is not None:
            body["since"] = {"a": ver(since)}
        ws.send_json(body)
        gw.wait(lambda: backend.reading)
        before = gw.state.hub.deliveries
        gw.release(ver(2), ["a"])
        gw.wait(lambda: gw.state.hub.deliveries > before)   # queued for the client, held back
        assert gw.client.portal is not None
        gw.client.portal.call(backend.open_gate)
        reply = recv(ws)
        assert reply["type"] == "subscribed"     # nothing before the reply
        assert reply["versions"] == {"a": ver(2)}
        rest = gw.ping(ws)
        # the client knows ver(2) from the reply; resuming from ver(1) it also gets it as an invalidate
        assert rest == ([{"type": "invalidate", "keys": {"a": ver(2)}}] if since else [])
        gw.release(ver(3), ["a"])
        assert gw.invalidations_until(ws, "a", ver(3)) == [{"a": ver(3)}]


def test_unsubscribe_then_resubscribe_reports_current_version(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["a"])
        ws.send_json({"op": "unsubscribe", "keys": ["a"]})
        assert recv(ws)["type"] == "unsubscribed"
        gw.release(ver(2), ["a"])
        assert gw.ping(ws) == []
        assert gw.subscribe(ws, ["a"])["versions"] == {"a": ver(2)}
        gw.release(ver(3), ["a"])
        assert gw.invalidations_until(ws, "a", ver(3)) == [{"a": ver(3)}]


def test_disconnect_removes_subscriptions(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["a", "b"])
        assert gw.state.hub.subscriptions == 2
    gw.wait(lambda: not gw.state.hub.sessions and gw.state.hub.subscriptions == 0)

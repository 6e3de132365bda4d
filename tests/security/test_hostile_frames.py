"""Hostile WebSocket frames against the real app (TestClient, in-memory backend), and over a real uvicorn
socket for the frame limit: every frame gets only documented replies or a documented close, the
connection survives what it should survive, and no key ever crosses a token's patterns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sec_support import FAST, SECRET, SUBPROTOCOL, Gateway, assert_documented, codes, exchange, recv, token, ver
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway import errors as E

REPO = Path(__file__).resolve().parents[2]
MAX_ID = 2**53 - 1
OPS = ("subscribe", "unsubscribe", "ping", "await")
KEY_CHARS = "ABCXYZabcxyz0189_.:@/+=-"
TOKEN_RE = re.compile(r"fw1:[0-9]{1,10}")  # the spec, written independently of gateway.tokens

# Generated inputs per test (with the other files, the suite sends well over 1,000).
N_MALFORMED, N_RANDOM, N_UNKNOWN_OP, N_BINARY = 250, 200, 100, 100
N_NESTED, N_HUGE_LISTS, N_OVERSIZED, N_KEYS, N_AWAITS, N_TENANTS = 50, 40, 30, 300, 150, 100


def hsettings(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _spec_key(key: object) -> bool:
    return isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.:@/+=-]{1,256}", key, re.ASCII) is not None


def _covers(patterns: tuple[str, ...], key: str) -> bool:
    return any(key.startswith(p[:-1]) if p.endswith("*") else key == p for p in patterns)


@pytest.fixture
def fast_gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(**FAST)


@contextlib.contextmanager
def opened(gw: Gateway, patterns: tuple[str, ...] = ("*",)) -> Iterator[Any]:
    with gw.connect(list(patterns)) as ws:
        yield ws
    gw.wait(lambda: not gw.state.hub.sessions)


# -- strategies

_valid_requests = st.sampled_from([
    '{"op":"subscribe","id":1,"keys":["card:1"]}', '{"op":"ping","id":7}', '{"op":"unsubscribe","keys":["a"]}',
    '{"op":"await","id":3,"token":"fw1:12","timeout_ms":0}', '{"op":"subscribe","since":{"a":null}}',
])
malformed_json = st.one_of(
    st.text(max_size=200).filter(lambda t: not _is_json(t)),
    st.builds(lambda s, cut: s[:cut], _valid_requests, st.integers(1, 30)).filter(lambda t: not _is_json(t)),
    st.builds(lambda s, i, junk: s[:i] + junk + s[i:], _valid_requests, st.integers(0, 40),
              st.sampled_from(["'", ",", "}", "{", "\\", '"', "//", "/*", "\x00", "]", "\ufeff"]))
    .filter(lambda t: not _is_json(t)),
    st.builds(lambda n, c: c * n, st.integers(1001, 100_000), st.sampled_from(["[", "{\"a\":", "[{\"a\":"])),
    st.builds(lambda n: '{"op":"ping","id":' + "9" * n + "}", st.integers(4301, 20_000)),  # int digit limit
    st.sampled_from(["", " ", "\n", "{", "}", "{'op': 'ping'}", '{"op":"ping",}', "{op:ping}", "nul", "tru",
                     '{"op":"ping"}{"op":"ping"}', '{"op":"ping"} x', "\x00", "\ud7ff", '"\\ud800', "[1,]",
                     '{"a":1,"a":}', "0x10", "01", "+1", ".5", "1.", "--1", "Infinity_", '"\\x41"']),
).filter(lambda t: not _is_json(t))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)
request_ids = st.one_of(st.integers(0, MAX_ID), st.integers(-2**64, 2**64), st.floats(), st.booleans(),
                        st.text(max_size=5), st.none())
valid_keys = st.text(alphabet=KEY_CHARS, min_size=1, max_size=20)
random_requests = st.fixed_dictionaries({}, optional={
    "op": st.sampled_from(OPS) | json_values,
    "id": request_ids,
    "keys": st.lists(valid_keys | json_values, max_size=6) | json_values,
    "since": st.dictionaries(valid_keys | st.text(max_size=8), st.none() | st.just(ver(5)) | json_values,
                             max_size=4) | json_values,
    "token": st.sampled_from(["fw1:1", "fw1:99"]) | json_values,
    "timeout_ms": st.integers(0, 50) | json_values,
    "extra": json_values,
})

HOSTILE_KEYS = [
    "*", "**", "*:*", "tenant:*", "tenant:1:*", "tenant:2:*", "tenant:1:**", "../", "../../etc/passwd",
    "tenant:1:../tenant:2:x", "tenant:1:x/../../tenant:2:x", "..%2ftenant:2:x", "%2e%2e", "%2e%2e%2ftenant:2:x",
    "tenant:1:%2e%2e", "tenant:1:%00", "\\..\\tenant:2", "tenant:1:\x00", "tenant:1\x00:x", "\x00", "tenant:1:x\n",
    "tenant:1:x\r\n", " tenant:1:x", "tenant:1:x ", "tenant:\uff11:x", "tenant:1:\uff58", "tenant:1:\u00e9",
    "tenant:1:\u202ex", "tenant:1:\ufeff", "tenant:1:x\u2028", "TENANT:1:x", "tenant:01:x", "tenant:1:", "tenant:1",
    "tenant:", "", "tenant:1:" + "a" * 300, "tenant:1:" + "a" * 247, "tenant:1:a,tenant:2:b", "tenant:2:x",
    "tenant:10:x", "tenant:1:x", "tenant:12:x", "board:7", "board:7x", "board:7*", "board:", "board:*",
    "board:7\n", "tenant:1:\U0001f600", "tenant:1:x\t", "tenant\u0131:1:x",
]
hostile_keys = st.one_of(
    st.sampled_from(HOSTILE_KEYS),
    st.builds(lambda a, b: a + b, st.sampled_from(["tenant:1:", "tenant:2:", "tenant:", "", "*", "../", "board:7"]),
              st.text(alphabet=KEY_CHARS + "*%\x00\n é\u202e/\\", max_size=12)),
    st.text(max_size=12),
)
PATTERN_SETS = [("tenant:1:*",), ("board:7",), ("tenant:1:*", "board:7")]


# -- malformed, random and binary frames


def test_frames_malformed_json_answered_bad_json(fast_gw: Gateway) -> None:
    with opened(fast_gw) as ws:
        @hsettings(N_MALFORMED)
        @given(text=malformed_json)
        def check(text: str) -> None:
            replies = exchange(fast_gw, ws, text)
            assert replies == [{"type": "error", "code": E.BAD_JSON, "message": replies[0]["message"]}]

        check()


def test_frames_random_json_answered_with_documented_messages_only(fast_gw: Gateway) -> None:
    """Any JSON value or request-shaped object: documented replies; a valid id is echoed on every reply."""
    gw = fast_gw
    with opened(gw) as ws:
        @hsettings(N_RANDOM)
        @given(body=random_requests | json_values)
        def check(body: Any) -> None:
            replies = exchange(gw, ws, json.dumps(body))
            if not isinstance(body, dict):
                assert codes(replies) == [E.BAD_REQUEST]
                return
            rid = body.get("id")
            if rid is not None and (isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid <= MAX_ID):
                assert codes(replies) == [E.BAD_REQUEST] and "id" not in replies[0]
                return
            for msg in replies:
                if msg["type"] != "invalidate":
                    assert msg.get("id") == rid, msg
            pending = 1 if body.get("op") == "await" and not replies else 0
            for _ in range(pending):  # a well-formed await answers after the ping, within await_max_ms
                msg = recv(ws)
                assert_documented(msg)
                assert msg.get("code") == E.TIMEOUT and msg.get("id") == rid
            subscribed = [k for m in replies if m["type"] == "subscribed" for k in m["versions"]]
            if subscribed:
                exchange(gw, ws, json.dumps({"op": "unsubscribe", "keys": subscribed}))
            assert gw.state.hub.subscriptions == 0

        check()


def test_frames_deep_nesting_answered_documented(fast_gw: Gateway) -> None:
    """Balanced nesting up to far past the recursion limit, alone or inside a request's fields. Whether a
    given depth parses depends on the stack (hypothesis itself raises the recursion limit), so both
    outcomes are allowed: the parse error, or the reply to a well-formed but wrong value."""
    shapes = {"[{}]": (E.BAD_JSON, E.BAD_REQUEST), '{"op":"subscribe","id":1,"keys":[{}]}': (E.BAD_JSON, E.INVALID_KEY),
              '{"op":"ping","id":{}}': (E.BAD_JSON, E.BAD_REQUEST), '{"op":"subscribe","since":{"a":{}}}':
              (E.BAD_JSON, E.INVALID_VERSION), '{"op":"await","token":{}}': (E.BAD_JSON, E.BAD_TOKEN)}
    with opened(fast_gw) as ws:
        @hsettings(N_NESTED)
        @given(depth=st.integers(1, 200_000), shape=st.sampled_from(sorted(shapes)), kind=st.sampled_from("[{"))
        def check(depth: int, shape: str, kind: str) -> None:
            nested = "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "1" + "}" * depth
            replies = exchange(fast_gw, ws, shape.replace("{}", nested, 1) if shape != "[{}]" else nested)
            assert len(replies) == 1 and replies[0]["code"] in shapes[shape], replies

        check()


def test_frames_unknown_op_answered_unknown_op(fast_gw: Gateway) -> None:
    with opened(fast_gw) as ws:
        @hsettings(N_UNKNOWN_OP)
        @given(op=st.text(max_size=100).filter(lambda o: o not in OPS)
               | st.sampled_from(["SUBSCRIBE", " ping", "ping ", "ping\x00", "subscribe\n", "Await", "pinG", "m",
                                  "__proto__", "constructor", "ping" * 100])
               | json_values.filter(lambda o: not isinstance(o, str)),
               rid=st.integers(0, MAX_ID))
        def check(op: Any, rid: int) -> None:
            replies = exchange(fast_gw, ws, json.dumps({"op": op, "id": rid}))
            expected = E.UNKNOWN_OP if isinstance(op, str) else E.BAD_REQUEST
            assert codes(replies) == [expected]
            assert replies[0]["id"] == rid
            assert len(replies[0]["message"]) < 200  # the op is not echoed at length

        check()


def test_frames_binary_answered_binary_unsupported(fast_gw: Gateway) -> None:
    with opened(fast_gw) as ws:
        @hsettings(N_BINARY)
        @given(data=st.binary(max_size=300) | _valid_requests.map(str.encode)
               | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(10_000, 40_000)))
        def check(data: bytes) -> None:
            replies = exchange(fast_gw, ws, data)
            assert codes(replies) == [E.BINARY_UNSUPPORTED] and "id" not in replies[0]

        check()


# -- keys: huge lists, wildcards, traversal look-alikes, unicode, NUL, other tenants


def test_frames_huge_key_lists_rejected_as_a_whole(fast_gw: Gateway) -> None:
    gw = fast_gw
    limit = gw.settings.max_subscriptions
    with opened(gw) as ws:
        @hsettings(N_HUGE_LISTS)
        @given(n=st.integers(limit + 1, 30_000), prefix=valid_keys, field=st.sampled_from(["keys", "since", "both"]),
               junk=st.booleans())
        def check(n: int, prefix: str, field: str, junk: bool) -> None:
            keys: list[Any] = [f"{prefix}{i}" for i in range(n)]
            if junk:
                keys[n // 2] = {"not": "a key"}
            if field == "keys":
                body: dict[str, Any] = {"op": "subscribe", "id": 1, "keys": keys}
            elif field == "since":
                body = {"op": "subscribe", "id": 1, "since": dict.fromkeys(map(str, keys))}
            else:  # each part within the limit, together beyond it; all valid keys (a junk one in a
                # part within the limit is rightly refused as invalid_key first)
                half = [f"{prefix}{i}" for i in range(limit // 2 + 1)]
                body = {"op": "subscribe", "id": 1, "keys": half,
                        "since": dict.fromkeys(f"{prefix}x{i}" for i in range(limit // 2 + 1))}
            replies = exchange(gw, ws, json.dumps(body))
            assert codes(replies) == [E.TOO_MANY_KEYS]
            assert gw.state.hub.subscriptions == 0

        check()


def test_frames_connection_wide_key_limit_holds(fast_gw: Gateway) -> None:
    gw = fast_gw
    limit = gw.settings.max_subscriptions
    with opened(gw) as ws:
        gw.subscribe(ws, [f"k{i}" for i in range(limit)])
        replies = exchange(gw, ws, json.dumps({"op": "subscribe", "id": 2, "keys": ["one-more"]}))
        assert codes(replies) == [E.TOO_MANY_KEYS]
        assert gw.state.hub.subscriptions == limit
        assert gw.subscribe(ws, ["k0", "k1"])["versions"] == {"k0": None, "k1": None}  # re-subscribing counts once


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=lambda p: "+".join(p))
def test_frames_hostile_keys_never_escape_the_token(make_gateway: Callable[..., Gateway],
                                                    patterns: tuple[str, ...]) -> None:
    """Wildcards, traversal look-alikes, percent-encoding, unicode, NUL and other tenants' keys: invalid
    keys reject the request, uncovered keys are `forbidden`, and only covered keys are ever subscribed."""
    gw = make_gateway(**FAST)
    gw.release(ver(1), ["tenant:1:x", "tenant:2:x", "board:7", "tenant:1:../tenant:2:x"])
    with opened(gw, patterns) as ws:
        @hsettings(N_KEYS // len(PATTERN_SETS))
        @given(keys=st.lists(hostile_keys, max_size=8), since=st.dictionaries(hostile_keys, st.none(), max_size=3),
               op=st.sampled_from(["subscribe", "unsubscribe"]))
        def check(keys: list[str], since: dict[str, None], op: str) -> None:
            body: dict[str, Any] = {"op": op, "id": 9, "keys": keys}
            if op == "subscribe" and since:
                body["since"] = since
            replies = exchange(gw, ws, json.dumps(body))
            named = keys + list(since) if op == "subscribe" else keys
            if not all(_spec_key(k) for k in named):
                assert codes(replies) == [E.INVALID_KEY]
                assert all(len(k) <= 256 for k in replies[0]["keys"])
                assert gw.state.hub.subscriptions == 0
                return
            if op == "unsubscribe":
                assert replies == [{"type": "unsubscribed", "id": 9, "keys": list(dict.fromkeys(keys))}]
                return
            merged = list(dict.fromkeys(named))
            forbidden = [k for k in merged if not _covers(patterns, k)]
            allowed = [k for k in merged if _covers(patterns, k)]
            expected = ([E.FORBIDDEN] if forbidden else []) + (["subscribed"] if allowed or not merged else [])
            resumed = [k for m in replies if m["type"] == "invalidate" for k in m["keys"]]
            assert set(resumed) <= set(allowed) & set(since)  # since=null resumes a key that has a version
            replies = [m for m in replies if m["type"] != "invalidate"]
            assert codes(replies) == expected
            if forbidden:
                assert replies[0]["keys"] == forbidden[:100]
            if allowed:
                assert set(replies[-1]["versions"]) == set(allowed)
            assert set(gw.state.hub.keys()) == set(allowed)
            if allowed:
                exchange(gw, ws, json.dumps({"op": "unsubscribe", "keys": allowed}))
            assert gw.state.hub.subscriptions == 0

        check()


@pytest.mark.parametrize("key", ["*", "tenant:1:*", "tenant:*", "board:*"])
def test_frames_wildcard_key_is_not_a_subscription_pattern(fast_gw: Gateway, key: str) -> None:
    with opened(fast_gw, ("tenant:1:*",)) as ws:
        replies = exchange(fast_gw, ws, json.dumps({"op": "subscribe", "id": 1, "keys": [key]}))
        assert codes(replies) == [E.INVALID_KEY]
        fast_gw.release(ver(2), ["tenant:1:a", "tenant:2:a"], prefixes=["tenant:"])
        assert fast_gw.ping(ws) == []  # nothing subscribed, so nothing delivered


def test_frames_cross_tenant_never_delivered(fast_gw: Gateway) -> None:
    """Two tenants on two connections, both asking for both tenants' keys; releases (keys and prefixes)
    for both: each connection receives only its own tenant's keys, and only keys it subscribed."""
    gw = fast_gw
    versions = iter(range(10, 10**9))
    tenant_keys = st.builds(lambda t, rest: f"tenant:{t}:{rest}", st.sampled_from([1, 2, 10, 12]),
                            st.text(alphabet="abc:/.", min_size=1, max_size=6))
    with gw.connect(["tenant:1:*"]) as one, gw.connect(["tenant:2:*"]) as two:
        conns = {"tenant:1:": one, "tenant:2:": two}
        for own, ws in conns.items():
            gw.subscribe(ws, [own + "sentinel"])

        @hsettings(N_TENANTS)
        @given(asks=st.lists(tenant_keys, min_size=1, max_size=8),
               releases=st.lists(st.tuples(st.lists(tenant_keys, max_size=5),
                                           st.lists(st.sampled_from(["tenant:", "tenant:1", "tenant:2:", "tenant:1:",
                                                                     "tenant:2:a", "tenant:10:", "t", ""]),
                                                    max_size=2)), min_size=1, max_size=6))
        def check(asks: list[str], releases: list[tuple[list[str], list[str]]]) -> None:
            mine: dict[str, set[str]] = {}
            for own, ws in conns.items():
                ws.send_text(json.dumps({"op": "subscribe", "id": 1, "keys": asks}))
                replies = [m for m in gw.ping(ws) if m["type"] != "invalidate"]
                for msg in replies:
                    assert_documented(msg)
                mine[own] = {k for m in replies if m["type"] == "subscribed" for k in m["versions"]}
                assert all(k.startswith(own) for k in mine[own])
            for keys, prefixes in releases:
                gw.release(ver(next(versions)), keys, prefixes)
            final = ver(next(versions))
            gw.release(final, ["tenant:1:sentinel", "tenant:2:sentinel"])
            for own, ws in conns.items():
                for frame in gw.invalidations_until(ws, own + "sentinel", final):
                    assert all(k.startswith(own) for k in frame), (own, frame)
                    assert set(frame) <= mine[own] | {own + "sentinel"}, (own, frame)
                extra = [k for k in mine[own] if k != own + "sentinel"]
                if extra:
                    ws.send_text(json.dumps({"op": "unsubscribe", "keys": extra}))
                    assert [m for m in gw.ping(ws) if m["type"] != "invalidate"][-1]["type"] == "unsubscribed"

        check()


# -- oversized frames, floods, awaits


OVERSIZED_SHAPES: list[Callable[[int], str]] = [
    lambda n: "x" * n,
    lambda n: "1" * n,
    lambda n: "[" * n,
    lambda n: '{"op":"ping","id":1,"pad":"' + "p" * n + '"}',
    lambda n: json.dumps({"op": "subscribe", "id": 1, "keys": ["k" * 300] * (n // 300)}),
    lambda n: json.dumps({"op": "subscribe", "id": 1, "keys": [f"k{i}" for i in range(n // 8)]}),
    lambda n: json.dumps({"op": "subscribe", "id": 1, "keys": ["tenant:2:" + "a" * (n - 30)]}),
    lambda n: json.dumps({"op": "unsubscribe", "id": 1, "keys": ["\x00" * n]}),
    lambda n: json.dumps({"op": "await", "id": 1, "token": "fw1:" + "1" * n}),
    lambda n: json.dumps({"op": "x" * n, "id": 1}),
]
oversized = st.builds(lambda shape, n: shape(n), st.sampled_from(OVERSIZED_SHAPES), st.integers(65_537, 300_000))


def test_frames_oversized_never_crash_the_app(fast_gw: Gateway) -> None:
    """TestClient does not enforce uvicorn's frame limit: the app itself must cope with any size, and
    never echo a huge input back."""
    with opened(fast_gw, ("tenant:1:*",)) as ws:
        @hsettings(N_OVERSIZED)
        @given(text=oversized)
        def check(text: str) -> None:
            for msg in exchange(fast_gw, ws, text):
                assert len(json.dumps(msg)) < 4096, str(msg)[:200]
            assert fast_gw.state.hub.subscriptions == 0

        check()


def _flood(ws: Any, n: int) -> list[str]:
    for rid in range(n):
        ws.send_json({"op": "subscribe", "id": rid, "keys": [f"k{rid}"]})
    seen = []
    with pytest.raises(WebSocketDisconnect) as info:
        while True:
            msg = recv(ws)
            assert_documented(msg)
            seen.append(msg.get("code", msg["type"]))
    assert info.value.code == E.CLOSE_POLICY
    return seen


def test_frames_subscribe_flood_rate_limited_then_4008(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()  # the default limits: 50/s, bursts of 100, 20 strikes
    with gw.connect() as ws:
        seen = _flood(ws, 500)
    burst, strikes = int(2 * gw.settings.max_messages_per_s), gw.settings.max_rate_strikes
    # the bucket refills a little while the flood is read, so a few more frames may pass in between
    assert seen[:burst] == ["subscribed"] * burst and seen[-strikes:] == [E.RATE_LIMITED] * strikes
    assert set(seen) == {"subscribed", E.RATE_LIMITED} and seen.count("subscribed") < burst + 50
    gw.wait(lambda: not gw.state.hub.sessions and not gw.state.hub.index)


def test_frames_paced_client_recovers_from_rate_limiting(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_messages_per_s=20.0, max_rate_strikes=5)
    with gw.connect() as ws:
        for rid in range(45):
            ws.send_json({"op": "ping", "id": rid})
        got = [recv(ws).get("code", "pong") for _ in range(45)]
        assert got.count(E.RATE_LIMITED) == 5 and got.count("pong") == 40
        time.sleep(0.3)  # the bucket refills; the strike count resets on the next accepted frame
        assert gw.ping(ws) == []


def test_frames_await_hostile_tokens_answered_documented(fast_gw: Gateway) -> None:
    gw = fast_gw
    max_ms = gw.settings.await_max_ms
    hostile_tokens = st.one_of(
        st.text(max_size=80),
        st.builds(lambda s: "fw1:" + s, st.text(max_size=14)),
        st.sampled_from(["fw1:", "fw1:-1", "fw1:1.5", "fw1:\u0661\u0662", "fw1:\u00b2", "fw1:12345678901", "fw1:1\n",
                         "FW1:1", " fw1:1", "fw1:1 ", "fw1:0x10", "fw1:1e3", "fw2:1", "fw1:1:2", "fw1:%31",
                         "fw1:\x001", "fw1:9999999999", "fw1:0000000000", "fw1:" + "1" * 60, "fw1:\uff11",
                         "fw1:*", "fw1:../1", "fw1:1\x00"]),
        json_values.filter(lambda v: not isinstance(v, str)),
    )
    timeouts = st.one_of(st.integers(0, max_ms), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=6),
                         st.booleans(), st.none(), st.just("absent"))

    with opened(gw) as ws:
        @hsettings(N_AWAITS)
        @given(tok=hostile_tokens, timeout=timeouts, rid=st.integers(0, MAX_ID))
        def check(tok: Any, timeout: Any, rid: int) -> None:
            body: dict[str, Any] = {"op": "await", "id": rid, "token": tok}
            if timeout != "absent":
                body["timeout_ms"] = timeout
            replies = exchange(gw, ws, json.dumps(body))
            value = body.get("timeout_ms", 5000)
            timeout_ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= max_ms
            if not isinstance(tok, str) or len(tok) > 64:
                expected = E.BAD_TOKEN
            elif not timeout_ok:
                expected = E.BAD_REQUEST
            elif TOKEN_RE.fullmatch(tok) is None:
                expected = E.BAD_TOKEN
            else:
                expected = E.TIMEOUT  # nothing is ever released here
            if not replies and expected == E.TIMEOUT:
                replies = [recv(ws)]
                assert_documented(replies[0])
            assert codes(replies) == [expected] and replies[0]["id"] == rid
            assert gw.state.awaits.pending == 0

        check()
    gw.wait(lambda: gw.state.awaits.pending == 0)


# -- the frame limit over a real uvicorn socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def uvicorn_gateway(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`python -m gateway` on a free port with the in-memory backend; yields (ws url, log file)."""
    port = _free_port()
    log_path = tmp_path / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHWIRE_")}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--host", "127.0.0.1", "--port", str(port), "--redis-url", "memory://",
             "--jwt-secret", SECRET],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gateway did not start:\n" + log_path.read_text()
            time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws?token={token()}", log_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_frames_oversized_over_uvicorn_closes_1009(uvicorn_gateway: tuple[str, Path]) -> None:
    url, log_path = uvicorn_gateway
    limit = 65536

    def padded_ping(size: int) -> str:
        head = '{"op":"ping","id":1,"pad":"'
        return head + "p" * (size - len(head) - 2) + '"}'

    async def scenario() -> list[int]:
        closes = []
        async with ws_connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None) as ws:
            await ws.send(padded_ping(limit))  # exactly at the limit: served
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "id": 1}
        for size in (limit + 1, 1_000_000):
            async with ws_connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None) as ws:
                await ws.send(padded_ping(size))
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 5)
                assert info.value.rcvd is not None
                closes.append(info.value.rcvd.code)
        async with ws_connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)]) as ws:
            await ws.send('{"op":"ping","id":2}')  # the gateway is still serving
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "id": 2}
        return closes

    assert asyncio.run(scenario()) == [E.CLOSE_TOO_BIG, E.CLOSE_TOO_BIG]
    log = log_path.read_text()
    assert not re.search(r"\bERROR\b|Traceback", log), log

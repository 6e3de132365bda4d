"""Connection floods: the gateway holds exactly `max_connections`, refuses the next with 4013, and once
every connection is gone it holds nothing: no session, no subscription, no pending await, no task."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from sec_support import SUBPROTOCOL, Gateway, recv, token, ver
from starlette.websockets import WebSocketDisconnect

from gateway import errors as E

MAX_CONNECTIONS = 50


def _tasks(gw: Gateway) -> int:
    assert gw.client.portal is not None
    return gw.client.portal.call(lambda: len(asyncio.all_tasks()))


def _settled(gw: Gateway, baseline: int, timeout_s: float = 5.0) -> None:
    """Wait until the gateway holds nothing for any connection, and its loop is back to `baseline` tasks."""
    state = gw.state
    deadline = time.monotonic() + timeout_s
    while True:
        now = (len(state.hub.sessions), len(state.hub.index), state.awaits.pending, _tasks(gw))
        if now == (0, 0, 0, baseline):
            return
        assert time.monotonic() < deadline, f"(sessions, index keys, awaits, tasks) = {now}, tasks at start {baseline}"
        time.sleep(0.02)


def _refused(gw: Gateway, path: str, **kwargs: Any) -> int:
    with pytest.raises(WebSocketDisconnect) as info, gw.client.websocket_connect(path, **kwargs) as ws:
        recv(ws)
    return info.value.code


@pytest.fixture
def small_gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(max_connections=MAX_CONNECTIONS, max_messages_per_s=1e6)


def test_floods_connections_beyond_max_closed_4013_and_all_released(small_gw: Gateway) -> None:
    gw = small_gw
    baseline = _tasks(gw)
    with contextlib.ExitStack() as stack:
        conns = []
        for i in range(MAX_CONNECTIONS):
            ws = stack.enter_context(gw.connect())
            keys = [f"shared:{i % 3}", f"own:{i}", "everyone"]
            gw.subscribe(ws, keys)
            # an await that would wait 30 s, and one that waits for a token released below
            ws.send_json({"op": "await", "id": 1, "token": f"fw1:{1000 + i}", "timeout_ms": 30000})
            ws.send_json({"op": "await", "id": 2, "token": "fw1:7", "timeout_ms": 30000})
            conns.append(ws)
        gw.wait(lambda: gw.state.awaits.pending == 2 * MAX_CONNECTIONS)
        assert len(gw.state.hub.sessions) == MAX_CONNECTIONS
        for _ in range(3):  # refused again and again, and refusals leave nothing behind
            assert _refused(gw, f"/ws?token={token()}", subprotocols=[SUBPROTOCOL]) == E.CLOSE_OVER_CAPACITY
        assert _refused(gw, "/ws?token=bad") == E.CLOSE_AUTH  # the token is checked first
        assert len(gw.state.hub.sessions) == MAX_CONNECTIONS
        gw.release(ver(9), ["everyone"], tx_id="7")
        for ws in conns:  # every held connection still works and got its delivery
            got = [recv(ws), recv(ws)]
            assert {"type": "visible", "id": 2, "token": "fw1:7", "version": ver(9)} in got
            assert {"type": "invalidate", "keys": {"everyone": ver(9)}} in got
        assert gw.state.awaits.pending == MAX_CONNECTIONS
        metrics = gw.client.get("/metrics").text
        assert f'freshwire_gateway_closes_total{{code="{E.CLOSE_OVER_CAPACITY}"}} 3.0' in metrics
    _settled(gw, baseline)
    with gw.connect() as ws:  # room again
        assert gw.ping(ws) == []
    _settled(gw, baseline)


def test_floods_connect_disconnect_churn_leaves_nothing(small_gw: Gateway) -> None:
    """Connections that vanish mid-request (subscribe or await in flight, replies unread) leak nothing."""
    gw = small_gw
    baseline = _tasks(gw)
    for round_ in range(5):
        with contextlib.ExitStack() as stack:
            for i in range(MAX_CONNECTIONS):
                ws = stack.enter_context(gw.connect())
                ws.send_json({"op": "subscribe", "keys": [f"k{i}", f"r{round_}"]})
                ws.send_json({"op": "await", "token": f"fw1:{i}", "timeout_ms": 30000})
                ws.send_bytes(b"\x00")
            gw.release(ver(round_ + 1), [f"r{round_}"])
        _settled(gw, baseline)


def test_floods_refused_tokens_leave_nothing(small_gw: Gateway) -> None:
    gw = small_gw
    baseline = _tasks(gw)
    for i in range(3 * MAX_CONNECTIONS):
        assert _refused(gw, f"/ws?token=garbage{i}") == E.CLOSE_AUTH
    _settled(gw, baseline)
    with contextlib.ExitStack() as stack:  # capacity is untouched by refused tokens
        for _ in range(MAX_CONNECTIONS):
            assert gw.ping(stack.enter_context(gw.connect())) == []
    _settled(gw, baseline)


def test_floods_policy_closes_leave_nothing(make_gateway: Callable[..., Gateway]) -> None:
    """Connections closed by the gateway itself (rate limit, unread replies) are cleaned up like the rest."""
    gw = make_gateway(max_connections=MAX_CONNECTIONS, max_messages_per_s=5.0, max_rate_strikes=2, control_queue=4)
    baseline = _tasks(gw)
    for _ in range(10):
        with gw.connect() as ws:
            for i in range(20):
                ws.send_json({"op": "subscribe", "keys": [f"k{i}"]})
            with pytest.raises(WebSocketDisconnect) as info:
                while True:
                    recv(ws)
            assert info.value.code == E.CLOSE_POLICY
    _settled(gw, baseline)

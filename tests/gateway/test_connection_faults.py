"""Review bugs 6 and 7 and silent task deaths (#11), through the real app with the memory backend:
an await reply that does not fit closes with 4008; `visible` never overtakes its own transaction's
`invalidate`; a connection task that dies is logged and closed with 1011."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from gw_support import Gateway, recv, token, ver
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from gateway import errors as E
from gateway import protocol
from gateway import ws as ws_module
from gateway.session import Session


def _await(ws: WebSocketTestSession, rid: int, tok: str, timeout_ms: int = 5000) -> None:
    ws.send_text(json.dumps({"op": "await", "id": rid, "token": tok, "timeout_ms": timeout_ms}))


def test_connection_await_reply_overflow_closes_with_4008(make_gateway: Callable[..., Gateway],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug 6: the client reads nothing (its writer is stuck in a send), the reply queue is full, and an
    await resolves: the connection is closed with the documented 4008, not left with a lost reply."""

    async def stuck_writer(_self: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(ws_module.Connection, "_writer", stuck_writer)
    gw: Gateway = make_gateway(control_queue=3)
    with gw.connect() as ws:
        _await(ws, 1, "fw1:42")
        gw.wait(lambda: gw.state.awaits.pending == 1)
        for rid in (2, 3, 4):
            ws.send_json({"op": "ping", "id": rid})
        gw.wait(lambda: any(s.depth == 3 for s in gw.state.hub.sessions))
        gw.release(ver(5), [], tx_id="42")
        with pytest.raises(WebSocketDisconnect) as closed:
            recv(ws)
        assert closed.value.code == E.CLOSE_POLICY


def test_connection_visible_waits_for_the_stream_when_the_store_is_ahead(gw: Gateway) -> None:
    """Bug 7: the version store already holds the transaction, but this gateway has not delivered its
    release yet: `visible` waits for it and follows the `invalidate`."""
    with gw.connect() as ws:
        gw.subscribe(ws, ["a"])
        gw.backend.txs["42"] = ver(5)  # in Redis, its pub/sub message not here yet
        _await(ws, 9, "fw1:42")
        with pytest.raises(AssertionError, match="no message"):
            recv(ws, timeout_s=0.3)
        gw.release(ver(5), ["a"], tx_id="42")
        assert recv(ws) == {"type": "invalidate", "keys": {"a": ver(5)}}
        assert recv(ws) == {"type": "visible", "id": 9, "token": "fw1:42", "version": ver(5)}


def test_session_visible_follows_pending_invalidations() -> None:
    """Bug 7, the delivery core: a reply queued after a pending invalidate goes out after it."""
    s = Session("t")
    s.begin_subscribe(["a"])
    s.finish_subscribe(None, {"a": None}, {}, None)
    s.take()
    assert s.offer("a", ver(3))
    s.control_after_pending(protocol.visible(1, "fw1:7", ver(3)))
    s.control(protocol.pong(2))
    assert [json.loads(f)["type"] for f in s.take()] == ["pong", "invalidate", "visible"]
    s.control_after_pending(protocol.visible(3, "fw1:8", ver(4)))  # nothing pending: an ordinary reply
    assert [json.loads(f)["type"] for f in s.take()] == ["visible"]


def test_connection_await_of_another_tenants_transaction_learns_only_its_position(gw: Gateway) -> None:
    """Bug 7, second part (decided in docs/protocol.md): a token covering none of a transaction's keys
    learns that it was released and its version (a WAL position, as the watermark already tells
    everyone), and nothing of its keys."""
    with gw.connect(patterns=["tenant:1:*"]) as ws:
        _await(ws, 1, "fw1:50")
        gw.wait(lambda: gw.state.awaits.pending == 1)
        gw.release(ver(6), ["tenant:2:secret"], tx_id="50")
        assert recv(ws) == {"type": "visible", "id": 1, "token": "fw1:50", "version": ver(6)}


def test_connection_writer_failure_is_logged_and_closed_with_1011(gw: Gateway, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Silent task deaths: a send that fails inside the writer closes the connection with 1011 and logs
    it with the connection id, instead of leaving a listen-only client connected to nothing."""

    def failing_invalidate(_keys: object) -> str:
        raise ValueError("injected send failure")

    with gw.connect() as ws:
        gw.subscribe(ws, ["a"])
        monkeypatch.setattr(protocol, "invalidate", failing_invalidate)
        with caplog.at_level(logging.ERROR, logger="gateway.ws"):
            gw.release(ver(3), ["a"])
            with pytest.raises(WebSocketDisconnect) as closed:
                recv(ws)
        assert closed.value.code == E.CLOSE_INTERNAL
    failures = [r for r in caplog.records if "writer" in r.getMessage() and "failed" in r.getMessage()]
    assert failures and failures[0].getMessage().startswith("[c")
    assert gw.state.metrics.task_failures.labels("writer")._value.get() == 1


def test_connection_lapse_tells_subscribers_of_the_batch_after_its_invalidate(gw: Gateway) -> None:
    """#11 "tell clients when a guarantee lapses": a release forced past max_hold reaches the
    subscribers of its keys as `invalidate`, then `lapse` replica_lag naming those keys; others hear
    nothing. A flush (prefix "") tells every subscriber, for all of its keys."""
    with gw.connect() as a, gw.connect() as b:
        gw.subscribe(a, ["k1", "k2"])
        gw.subscribe(b, ["k3"])
        gw.release(ver(5), ["k1"], lapse="replica_lag")
        assert recv(a) == {"type": "invalidate", "keys": {"k1": ver(5)}}
        assert recv(a) == {"type": "lapse", "reason": "replica_lag", "keys": ["k1"], "version": ver(5)}
        assert gw.ping(b) == []
        gw.release(ver(6), [], [""], lapse="flush")
        assert recv(a) == {"type": "invalidate", "keys": {"k1": ver(6), "k2": ver(6)}}
        assert recv(a) == {"type": "lapse", "reason": "flush", "keys": ["k1", "k2"], "version": ver(6)}
        assert recv(b) == {"type": "invalidate", "keys": {"k3": ver(6)}}
        assert recv(b)["reason"] == "flush"
    assert gw.state.metrics.lapses.labels("replica_lag")._value.get() == 1


def test_metrics_connection_staleness_histogram_and_worst(make_gateway: Callable[..., Gateway],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """#11 per-connection staleness: a connection whose writer is stuck holds an unsent change; its age
    shows in the histogram over connections and as the worst, while an idle connection counts as 0."""
    import time

    async def stuck_writer(_self: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(ws_module.Connection, "_writer", stuck_writer)
    gw: Gateway = make_gateway()
    with gw.connect() as a, gw.connect():
        a.send_json({"op": "subscribe", "id": 1, "keys": ["k"]})
        gw.wait(lambda: any("k" in s.known and not s.held for s in gw.state.hub.sessions))
        gw.release(ver(2), ["k"], commit_ts_ms=int(time.time() * 1000) - 3000)
        gw.wait(lambda: any(s.pending for s in gw.state.hub.sessions))
        text = gw.client.get("/metrics").text
    worst = float(next(line.split()[1] for line in text.splitlines()
                       if line.startswith("freshwire_gateway_connection_staleness_worst_seconds")))
    assert 3.0 <= worst < 60
    assert 'freshwire_gateway_connection_staleness_seconds_bucket{le="2.5"} 1.0' in text
    assert 'freshwire_gateway_connection_staleness_seconds_count 2.0' in text


def test_metrics_staleness_buckets_are_cumulative() -> None:
    from gateway.metrics import staleness_buckets

    cumulative, total = staleness_buckets([0.0, 0.003, 7.0, 99.0], bounds=(0.002, 0.005, 10.0))
    assert cumulative == [1, 2, 3, 4] and total == pytest.approx(106.003)



async def test_connection_reader_yields_so_buffered_requests_are_answered() -> None:
    """A client that sends 90 requests at once (within the rate burst) and reads continuously is never
    closed for "replies unread": the reader lets the writer send between buffered frames. Needs a real
    uvicorn server: TestClient's transport switches tasks on every receive and hides the bug."""
    import websockets
    from test_client_resume import serve
    from websockets.typing import Subprotocol

    from gateway.backend_memory import MemoryBackend

    async with serve(MemoryBackend()) as (url, _state), \
            websockets.connect(f"{url}?token={token()}", subprotocols=[Subprotocol("freshwire.v1")]) as ws:
        await ws.send(json.dumps({"op": "ping", "id": 0}))
        assert json.loads(await ws.recv())["id"] == 0
        for rid in range(1, 91):
            await ws.send(json.dumps({"op": "ping", "id": rid}))
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(90)]
    assert [r.get("id") for r in replies] == list(range(1, 91))


def test_session_lapses_merge_per_reason_and_never_overflow_the_replies() -> None:
    """A burst of lapses (a replica that stalls, then releases many transactions past max_hold) costs
    one frame per reason, after the invalidate, and never a reply slot each (it would close 4008)."""
    s = Session("t", control_limit=3)
    s.begin_subscribe(["a", "b"])
    s.finish_subscribe(None, {"a": None, "b": None}, {}, None)
    s.take()
    for n in range(1, 201):
        key = "a" if n % 2 else "b"
        s.offer(key, ver(n))
        s.lapse("replica_lag", [key, "not-mine"], ver(n))
    s.lapse("resync", ["a"], ver(150))
    frames = [json.loads(f) for f in s.take()]
    assert [f["type"] for f in frames] == ["invalidate", "lapse", "lapse"]
    assert frames[1] == {"type": "lapse", "reason": "replica_lag", "keys": ["a", "b"], "version": ver(200)}
    assert frames[2]["reason"] == "resync" and frames[2]["keys"] == ["a"]
    assert s.take() == []

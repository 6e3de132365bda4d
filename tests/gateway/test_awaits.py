"""Read-your-writes through the gateway: `await` over WebSocket and GET /v1/wait, memory backend."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from gw_support import Gateway, recv, token, ver
from starlette.testclient import WebSocketTestSession

from gateway import errors as E


def _await(ws: WebSocketTestSession, rid: int, tok: str, timeout_ms: int = 5000) -> None:
    ws.send_text(json.dumps({"op": "await", "id": rid, "token": tok, "timeout_ms": timeout_ms}))


def test_await_resolves_when_the_transaction_is_released(gw: Gateway) -> None:
    with gw.connect() as ws:
        _await(ws, 1, "fw1:42")
        gw.wait(lambda: gw.state.awaits.pending == 1)
        gw.release(ver(5), ["a"], tx_id="42")
        assert recv(ws) == {"type": "visible", "id": 1, "token": "fw1:42", "version": ver(5)}
    assert gw.state.awaits.pending == 0


def test_await_of_an_already_released_transaction_answers_at_once(gw: Gateway) -> None:
    gw.release(ver(7), [], tx_id="43")  # no keys: a transaction that touched no captured table
    with gw.connect() as ws:
        _await(ws, 2, "fw1:43")
        assert recv(ws) == {"type": "visible", "id": 2, "token": "fw1:43", "version": ver(7)}


def test_await_times_out_with_the_timeout_code(gw: Gateway) -> None:
    with gw.connect() as ws:
        _await(ws, 3, "fw1:44", timeout_ms=50)
        reply = recv(ws)
        assert reply["type"] == "error" and reply["code"] == E.TIMEOUT and reply["id"] == 3


def test_await_does_not_block_other_requests(gw: Gateway) -> None:
    with gw.connect() as ws:
        _await(ws, 4, "fw1:45")
        ws.send_text('{"op":"ping","id":5}')
        assert recv(ws) == {"type": "pong", "id": 5}
        gw.release(ver(9), [], tx_id="45")
        assert recv(ws)["type"] == "visible"


def test_await_limit_per_connection(make_gateway: Callable[..., Gateway]) -> None:
    gw: Gateway = make_gateway(max_awaits_per_connection=2)
    with gw.connect() as ws:
        for rid in (1, 2, 3):
            _await(ws, rid, f"fw1:{rid}")
        reply = recv(ws)
        assert reply["code"] == E.TOO_MANY_AWAITS and reply["id"] == 3


def test_await_many_concurrent_all_resolve(gw: Gateway) -> None:
    with gw.connect() as ws:
        for rid in range(1, 101):
            _await(ws, rid, f"fw1:{1000 + rid}")
        gw.wait(lambda: gw.state.awaits.pending == 100)
        for rid in range(1, 101):
            gw.release(ver(rid), [], tx_id=str(1000 + rid))
        replies = [recv(ws) for _ in range(100)]
    assert sorted(r["id"] for r in replies) == list(range(1, 101))
    assert all(r["version"] == ver(r["id"]) for r in replies)


def test_http_wait_200_once_visible(gw: Gateway) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    result: dict[str, object] = {}

    def call() -> None:
        r = gw.client.get("/v1/wait", params={"token": "fw1:77", "timeout_ms": 5000}, headers=headers)
        result["status"], result["body"] = r.status_code, r.json()

    thread = threading.Thread(target=call)
    thread.start()
    gw.wait(lambda: gw.state.awaits.pending == 1)
    gw.release(ver(11), ["a"], tx_id="77")
    thread.join(5)
    assert result == {"status": 200, "body": {"visible": True, "token": "fw1:77", "version": ver(11)}}


def test_http_wait_errors(gw: Gateway) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    r = gw.client.get("/v1/wait", params={"token": "fw1:78", "timeout_ms": 20}, headers=headers)
    assert r.status_code == 408 and r.json()["error"]["code"] == E.TIMEOUT
    r = gw.client.get("/v1/wait", params={"token": "78"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == E.BAD_TOKEN
    r = gw.client.get("/v1/wait", params={"token": "fw1:78", "timeout_ms": "soon"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == E.BAD_REQUEST
    r = gw.client.get("/v1/wait", params={"token": "fw1:78"})
    assert r.status_code == 401


def test_http_watermark(gw: Gateway) -> None:
    gw.release(ver(12), ["a"])
    gw.wait(lambda: gw.state.pump.watermark.value == ver(12))
    assert gw.client.get("/v1/watermark").json() == {"watermark": ver(12)}


def test_await_resync_resolves_tokens_released_during_a_break(gw: Gateway) -> None:
    with gw.connect() as ws:
        _await(ws, 1, "fw1:90")
        gw.wait(lambda: gw.state.awaits.pending == 1)
        gw.backend.txs["90"] = ver(13)  # released while this gateway heard nothing
        gw.resync()
        assert recv(ws)["version"] == ver(13)

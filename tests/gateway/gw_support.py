"""Helpers for gateway tests: the real Starlette app with the in-memory backend, driven by TestClient.

TestClient runs the app on an event loop in another thread. MemoryBackend.release() puts onto an
asyncio.Queue, which is not thread-safe, so every release goes through the client's blocking portal
(`client.portal.call`) and runs on the app's own loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
from starlette.testclient import TestClient, WebSocketTestSession

from contract.redis_layout import Published
from gateway.auth import mint
from gateway.backend_memory import MemoryBackend
from gateway.settings import GatewaySettings
from gateway.state import GatewayState

SECRET = "test-secret-of-at-least-32-bytes-0123456789"
SUBPROTOCOL = "freshwire.v1"
RECV_TIMEOUT_S = 5.0


def ver(n: int) -> str:
    """Version number n as the protocol spells it: 16 lowercase hex digits."""
    return f"{n:016x}"


def token(patterns: Sequence[str] = ("*",), ttl_s: int = 6 * 3600) -> str:
    return mint(SECRET, "tester", list(patterns), ttl_s)


def recv(ws: WebSocketTestSession, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
    """The next message, or AssertionError after `timeout_s` (TestClient's own receive never times out).

    Raises WebSocketDisconnect (with the close code) if the server closed the connection."""

    async def receive() -> Any:
        with anyio.fail_after(timeout_s):
            return await ws._send_rx.receive()

    try:
        message = ws.portal.call(receive)
    except TimeoutError:
        raise AssertionError(f"no message within {timeout_s}s") from None
    ws._raise_on_close(message)
    body: dict[str, Any] = json.loads(message["text"])
    return body


@dataclass
class Gateway:
    client: TestClient
    backend: MemoryBackend
    settings: GatewaySettings
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 10**9)))

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.client.app.state.fw  # type: ignore[attr-defined]
        return state

    def release(self, version: str, keys: Sequence[str] = (), prefixes: Sequence[str] = (),
                commit_ts_ms: int = 0, tx_id: str = "", lapse: str = "") -> Published | None:
        assert self.client.portal is not None
        return self.client.portal.call(lambda: self.backend.release(version, keys, prefixes, commit_ts_ms, tx_id,
                                                                    lapse))

    def resync(self) -> None:
        assert self.client.portal is not None
        self.client.portal.call(self.backend.resync)

    def connect(self, patterns: Sequence[str] = ("*",), tok: str | None = None,
                subprotocols: list[str] | None = None, **kwargs: Any) -> Any:
        tok = token(patterns) if tok is None else tok
        return self.client.websocket_connect(f"/ws?token={tok}", subprotocols=subprotocols or [SUBPROTOCOL],
                                             **kwargs)

    def subscribe(self, ws: WebSocketTestSession, keys: Sequence[str],
                  since: dict[str, str | None] | None = None) -> dict[str, Any]:
        """Subscribe and return the `subscribed` reply (asserting it is one)."""
        rid = next(self._ids)
        body: dict[str, Any] = {"op": "subscribe", "id": rid, "keys": list(keys)}
        if since is not None:
            body["since"] = since
        ws.send_json(body)
        reply = recv(ws)
        assert reply["type"] == "subscribed", reply
        assert reply["id"] == rid
        return reply

    def ping(self, ws: WebSocketTestSession) -> list[dict[str, Any]]:
        """Ping and return every message received before the matching pong."""
        rid = next(self._ids)
        ws.send_json({"op": "ping", "id": rid})
        before = []
        while (msg := recv(ws)) != {"type": "pong", "id": rid}:
            before.append(msg)
        return before

    def invalidations_until(self, ws: WebSocketTestSession, key: str, version: str) -> list[dict[str, str]]:
        """Every invalidate frame's keys, up to and including the one telling `key` at `version`."""
        frames: list[dict[str, str]] = []
        while True:
            msg = recv(ws)
            assert msg["type"] == "invalidate", msg
            frames.append(msg["keys"])
            if msg["keys"].get(key) == version:
                return frames

    def wait(self, predicate: Callable[[], bool], timeout_s: float = RECV_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.005)


def settings(**overrides: Any) -> GatewaySettings:
    return replace(GatewaySettings(jwt_secret=SECRET, redis_url="memory://"), **overrides)


def gateway_factory() -> Iterator[Callable[..., Gateway]]:
    """The body of the `make_gateway` fixture: make_gateway(backend=None, **settings) -> a running
    Gateway, every one closed at the end of the test."""
    from starlette.testclient import TestClient as _TestClient

    from gateway.app import create_app

    clients: list[_TestClient] = []

    def make(backend: MemoryBackend | None = None, **overrides: Any) -> Gateway:
        backend = backend or MemoryBackend()
        s = settings(**overrides)
        client = _TestClient(create_app(s, backend=backend))
        client.__enter__()
        clients.append(client)
        gw = Gateway(client, backend, s)
        gw.wait(lambda: gw.state.pump.alive)
        return gw

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)

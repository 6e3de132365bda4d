"""A Python client for protocol freshwire.v1: connect with a token, subscribe, iterate invalidations.

It reconnects by itself (exponential back-off with full jitter, a fresh token from `get_token` when
given) and resumes exactly: on every reconnect it subscribes again with `since` set to the newest
version it has seen of each key, so the gateway (any gateway) sends exactly what was missed.

    async with Client("ws://127.0.0.1:18080/ws", token=token) as client:
        await client.subscribe(["card:1"])
        async for batch in client:          # {"card:1": "00000000019d0138"}
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from gateway.errors import CLOSE_AUTH
from gateway.protocol import SUBPROTOCOL

log = logging.getLogger(__name__)

State = Literal["connecting", "open", "reconnecting", "closed"]
QUEUE_BOUND = 10_000


class ClientError(Exception):
    """The gateway answered a request with an error frame; carries its code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Client:
    def __init__(self, url: str, token: str | None = None,
                 get_token: Callable[[], Awaitable[str]] | None = None,
                 min_backoff_s: float = 0.05, max_backoff_s: float = 5.0,
                 on_state: Callable[[State], None] | None = None, record: bool = False) -> None:
        if token is None and get_token is None:
            raise ValueError("pass token or get_token")
        self.url = url
        self._token = token
        self._get_token = get_token
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.on_state = on_state or (lambda _s: None)
        self.versions: dict[str, str | None] = {}   # newest version seen per subscribed key
        self.state: State = "connecting"
        self.connects = 0
        self._batches: asyncio.Queue[dict[str, str]] = asyncio.Queue(QUEUE_BOUND)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._ws: Any = None
        self._open = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self.errors: list[dict[str, Any]] = []
        self.record = record
        self.received: list[tuple[str, str]] = []  # every (key, version) as sent, when `record` is on (tests)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="freshwire-client")
        await asyncio.wait_for(self._open.wait(), timeout_s)

    async def close(self) -> None:
        self._set_state("closed")
        if self._resuming is not None:
            self._resuming.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()

    def _set_state(self, state: State) -> None:
        if self.state != state:
            self.state = state
            self.on_state(state)

    # -- requests
    async def _request(self, body: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        await asyncio.wait_for(self._open.wait(), timeout_s)
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = future
        await self._ws.send(json.dumps({**body, "id": rid}))
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._replies.pop(rid, None)

    async def subscribe(self, keys: list[str], since: dict[str, str | None] | None = None) -> dict[str, str | None]:
        """Subscribe; returns the current versions. Raises ClientError for a refused request."""
        for key in keys:
            self.versions.setdefault(key, (since or {}).get(key))
        reply = await self._request({"op": "subscribe", "keys": keys, "since": since or {}})
        return self._absorb(reply)

    async def unsubscribe(self, keys: list[str]) -> None:
        for key in keys:
            self.versions.pop(key, None)
        await self._request({"op": "unsubscribe", "keys": keys})

    async def drop(self) -> None:
        """Close the socket as a network fault would; the client reconnects and resumes by itself."""
        if self._ws is not None:
            await self._ws.close()

    async def wait_visible(self, write_token: str, timeout_ms: int = 5000) -> str:
        """Wait until the token's transaction is released; returns its version.
        Raises ClientError with code `timeout` (or another protocol error code)."""
        reply = await self._request({"op": "await", "token": write_token, "timeout_ms": timeout_ms},
                                    timeout_s=timeout_ms / 1000 + 10)
        if reply.get("type") != "visible":
            raise ClientError(str(reply.get("code")), str(reply.get("message")))
        return str(reply["version"])

    async def ping(self) -> None:
        await self._request({"op": "ping"})

    def _absorb(self, reply: dict[str, Any]) -> dict[str, str | None]:
        if reply.get("type") == "error":
            raise ClientError(str(reply.get("code")), str(reply.get("message")))
        versions: dict[str, str | None] = reply.get("versions", {})
        for key, version in versions.items():
            if key in self.versions and self.versions[key] is None:
                self.versions[key] = version
        return versions

    # -- the stream
    def __aiter__(self) -> AsyncIterator[dict[str, str]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, str]]:
        while True:
            yield await self._batches.get()

    async def next_batch(self, timeout_s: float) -> dict[str, str]:
        return await asyncio.wait_for(self._batches.get(), timeout_s)

    # -- connection loop
    async def _token_now(self) -> str:
        if self._get_token is not None:
            self._token = await self._get_token()
        assert self._token is not None
        return self._token

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                token = await self._token_now()
                async with websockets.connect(f"{self.url}?token={token}", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                              max_queue=None, open_timeout=5) as ws:
                    self._ws = ws
                    attempt = 0
                    await self._resume(ws)
                    await self._read(ws)
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_AUTH and self._get_token is None:
                    log.error("token refused (%s); not reconnecting", exc.rcvd.reason)
                    self._set_state("closed")
                    return
            except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
                log.info("connect failed: %s", exc)
            self._open.clear()
            self._set_state("reconnecting")
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection lost"))
            delay = min(self.max_backoff_s, self.min_backoff_s * 2 ** attempt) * random.random()
            attempt += 1
            await asyncio.sleep(delay)

    async def _resume(self, _ws: Any) -> None:
        self.connects += 1
        self._open.set()
        self._set_state("open")
        if self.versions:
            self._resuming = asyncio.create_task(self._resubscribe(), name="freshwire-resume")

    async def _resubscribe(self) -> None:
        """Subscribe again with `since`; a refusal with `unavailable` (the gateway's version store is
        down, e.g. Redis restarting) is retried with back-off, or the client would stay connected
        with nothing subscribed."""
        attempt = 0
        while True:
            try:
                self._absorb(await self._request({"op": "subscribe", "keys": list(self.versions),
                                                  "since": dict(self.versions)}))
                return
            except ClientError as exc:
                if exc.code != "unavailable":
                    log.error("resume refused: %s", exc)
                    return
            except (ConnectionError, TimeoutError, ConnectionClosed):
                return  # the next connection resumes
            attempt += 1
            await asyncio.sleep(min(self.max_backoff_s, self.min_backoff_s * 2 ** attempt) * random.random())

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "invalidate":
                if self.record:
                    self.received.extend(message["keys"].items())
                fresh = {k: v for k, v in message["keys"].items() if (self.versions.get(k) or "") < v}
                self.versions.update(fresh)
                if fresh:
                    await self._batches.put(fresh)
            elif "id" in message and message["id"] in self._replies:
                future = self._replies[message["id"]]
                if not future.done():
                    future.set_result(message)
            elif kind == "subscribed":
                self._absorb(message)
            elif kind == "error":
                self.errors.append(message)

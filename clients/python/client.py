"""A Python client for protocol freshwire.v1: connect with a token, subscribe, iterate invalidations.

It reconnects by itself (the client reconnect policy of docs/protocol.md: exponential back-off with
full jitter, a fresh token from `get_token` when given) and resumes exactly: on every reconnect it
subscribes again with `since` set to the newest version it has seen of each key, so the gateway (any
gateway) sends exactly what was missed.

subscribe()/unsubscribe() calls made together share frames, and frames are paced under the
gateway's rate limit by `Outbox`, a sans-I/O scheduler: a call returns once the gateway confirmed
its keys, or raises ClientError for the keys it refused; a frame the gateway drops is sent again.

A `lapse` message (a guarantee did not hold for some keys) goes to `on_lapse` and into `lapses`;
`lag_s()` says how long the oldest batch received has been waiting for the application.

    async with Client("ws://127.0.0.1:18080/ws", token=token) as client:
        await client.subscribe(["card:1"])
        async for batch in client:          # {"card:1": "00000000019d0138"}
            ...                             # batch.data: {"card:1": {"title": ...}} for payload rules
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from clients.python.outbox import (
    CLOSE_ABNORMAL,
    FRAME_BURST,
    FRAMES_PER_S,
    LAPSES_KEPT,
    MAX_BACKOFF_S,
    MAX_SUBSCRIPTIONS,
    MIN_BACKOFF_S,
    QUEUE_BOUND,
    REPLY_TIMEOUT_S,
    ClientError,
    Frame,
    Other,
    Outbox,
    Refusal,
    Request,
    State,
    _newest,
    attempt_after_close,
    backoff_delay,
)
from contract.keys import key_for as key_for  # re-exported: clients build keys as the consumer renders them
from contract.keys import valid_key
from gateway import errors as E
from gateway.protocol import SUBPROTOCOL, VERSION_RE

log = logging.getLogger(__name__)


class Batch(dict[str, str]):
    """One `invalidate`'s news: key -> version. `data` holds the payload the invalidate carried for some
    of these keys (key -> the rule's payload columns, None for a deleted row; docs/protocol.md `data`):
    a key with an entry may be applied as it is, a key without one is refetched as usual."""

    def __init__(self, versions: dict[str, str], data: dict[str, Any] | None = None) -> None:
        super().__init__(versions)
        self.data: dict[str, Any] = data or {}


class Client:
    def __init__(self, url: str, token: str | None = None,
                 get_token: Callable[[], Awaitable[str]] | None = None,
                 min_backoff_s: float = MIN_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 on_state: Callable[[State], None] | None = None, record: bool = False,
                 frames_per_s: float = FRAMES_PER_S, frame_burst: int = FRAME_BURST,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS, reply_timeout_s: float = REPLY_TIMEOUT_S,
                 on_lapse: Callable[[dict[str, Any]], None] | None = None) -> None:
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
        self._batches: asyncio.Queue[Batch] = asyncio.Queue(QUEUE_BOUND)
        self._received_at: deque[float] = deque()    # monotonic time each queued batch was read, oldest first
        self.on_lapse = on_lapse
        self.lapses: deque[dict[str, Any]] = deque(maxlen=LAPSES_KEPT)   # newest last
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}   # awaits and pings
        self._sent: set[int] = set()                 # ... of which sent on the current connection
        self._next_id = 1
        self._outbox: Outbox[asyncio.Future[None], Request] = Outbox(
            rate=frames_per_s, burst=frame_burst, max_keys=max_subscriptions, keys_per_frame=max_subscriptions,
            reply_timeout_s=reply_timeout_s, min_backoff_s=min_backoff_s, max_backoff_s=max_backoff_s,
            now=time.monotonic())
        self._with_since: set[str] = set()           # keys sent with `since` (given, or seen live before)
        self._reported: dict[str, str | None] = {}   # versions the gateway's replies reported
        self._wake = asyncio.Event()
        self._ws: Any = None
        self._open = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        self._fail_all("closed", "the client is closed")

    def _set_state(self, state: State) -> None:
        if self.state != state:
            self.state = state
            self.on_state(state)

    def _fail_all(self, code: str, message: str) -> None:
        self._outbox.fail_all(code, message)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ClientError(code, message))
        self._settle()

    # -- requests
    def _take_id(self) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        return rid

    async def _request(self, body: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send `body` (paced, once connected) and return its reply."""
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        rid = self._take_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = future
        item = (rid, body)
        self._outbox.enqueue(item)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._replies.pop(rid, None)
            self._sent.discard(rid)
            self._outbox.cancel(item)

    async def subscribe(self, keys: list[str], since: dict[str, str | None] | None = None) -> dict[str, str | None]:
        """Subscribe `keys` (and the keys of `since`: key -> version held, to resume); returns once the
        gateway confirmed them (waiting across reconnects), with their current versions.

        Calls made together share frames. Raises ClientError for keys the gateway refused (`forbidden`,
        `too_many_keys` past `max_subscriptions`, …; `.keys` lists them, they are not kept, the other
        keys stay subscribed), for a malformed key or version (`invalid_key`, `invalid_version`, nothing
        sent), or `closed`."""
        since = since or {}
        wanted = list(dict.fromkeys([*keys, *since]))
        bad = [k for k in wanted if not valid_key(k)]
        if bad:
            raise ClientError(E.INVALID_KEY, "keys are 1-256 characters of A-Z a-z 0-9 _ . : @ / + = -", bad[:5])
        bad = [k for k, v in since.items() if v is not None and not (isinstance(v, str) and VERSION_RE.match(v))]
        if bad:
            raise ClientError(E.INVALID_VERSION, "versions are 16 lowercase hex digits", bad[:5])
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        for key in wanted:
            self.versions.setdefault(key, since.get(key))
            if key in since:
                self._with_since.add(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.want(wanted, done)
        self._changed()
        await done
        return {k: _newest(self._reported.get(k), self.versions.get(k)) for k in wanted}

    async def unsubscribe(self, keys: list[str]) -> None:
        """Unsubscribe; returns once the gateway confirmed (no invalidate of these keys follows)."""
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        for key in keys:
            self.versions.pop(key, None)
            self._with_since.discard(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.unwant(keys, done)
        self._changed()
        await done
        for key in keys:
            if key not in self.versions:
                self._reported.pop(key, None)

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

    def _changed(self) -> None:
        self._settle()
        self._wake.set()

    def _settle(self) -> None:
        """Hand the outbox's events to the callers: settled calls, refused keys (dropped here)."""
        for event in self._outbox.take():
            if isinstance(event, Refusal):
                for key in event.keys:
                    self.versions.pop(key, None)
                    self._with_since.discard(key)
                    self._reported.pop(key, None)
                if event.frame is None:
                    self.errors.append({"type": "error", "code": event.code, "message": event.message,
                                        "keys": list(event.keys)})
            elif not event.ticket.done():
                if event.refusal is None:
                    event.ticket.set_result(None)
                else:
                    event.ticket.set_exception(ClientError(event.refusal.code, event.refusal.message,
                                                           list(event.refusal.keys)))

    def _absorb(self, reply: dict[str, Any]) -> None:
        """A `subscribed` reply. A key sent without `since` takes the reported version (no invalidate
        follows); one sent with `since` keeps it (an invalidate follows when it is behind)."""
        versions = reply.get("versions")
        for key, version in (versions if isinstance(versions, dict) else {}).items():
            if key not in self.versions:
                continue  # unsubscribed meanwhile
            self._reported[key] = version
            if key not in self._with_since:
                if self.versions[key] is None:
                    self.versions[key] = version
                self._with_since.add(key)  # from now on (resumes), send what we hold

    # -- the stream
    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Batch]:
        while True:
            batch = await self._batches.get()
            self._trim()
            yield batch

    async def next_batch(self, timeout_s: float) -> Batch:
        try:
            return await asyncio.wait_for(self._batches.get(), timeout_s)
        finally:
            self._trim()

    def lag_s(self) -> float:
        """How far the application trails this client: seconds since the oldest batch still waiting
        to be taken (`async for`, next_batch()) was read from the gateway; 0.0 when none waits. It
        counts nothing before the client read the frame (database, pipeline, network): no commit time
        travels on the wire."""
        self._trim()
        return max(0.0, time.monotonic() - self._received_at[0]) if self._received_at else 0.0

    def _trim(self) -> None:
        # One stamp per queued batch, both first in first out: batches taken drop the oldest stamps.
        while len(self._received_at) > self._batches.qsize():
            self._received_at.popleft()

    def _lapse(self, message: dict[str, Any]) -> None:
        """A `lapse`: kept in `lapses` and handed to `on_lapse`, whose failure is logged, not raised."""
        self.lapses.append(message)
        if self.on_lapse is None:
            return
        try:
            self.on_lapse(message)
        except Exception:
            log.exception("on_lapse failed for %s", message.get("reason"))

    # -- connection loop
    async def _token_now(self) -> str:
        if self._get_token is not None:
            self._token = await self._get_token()
        if self._token is None:
            raise ValueError("no token")
        return self._token

    async def _run(self) -> None:
        attempt = 0
        while True:
            opened_at: float | None = None
            code = CLOSE_ABNORMAL
            try:
                token = await self._token_now()
                async with websockets.connect(f"{self.url}?token={token}", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                              max_queue=None, open_timeout=5) as ws:
                    self._ws = ws
                    opened_at = time.monotonic()
                    await self._session(ws)
                code = ws.close_code or CLOSE_ABNORMAL
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else CLOSE_ABNORMAL
                if code == E.CLOSE_AUTH and self._get_token is None:
                    log.error("token refused (%s); not reconnecting", exc.rcvd.reason if exc.rcvd else "")
                    self._set_state("closed")
                    self._lost()
                    self._fail_all("closed", "the gateway refused the token (close 4001)")
                    return
            except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
                log.info("connect failed: %s", exc)
            except Exception:
                log.exception("connection failed")
            self._lost()
            self._set_state("reconnecting")
            if opened_at is not None:
                attempt = attempt_after_close(attempt, time.monotonic() - opened_at, code)
            await asyncio.sleep(backoff_delay(attempt, self.min_backoff_s, self.max_backoff_s))
            attempt += 1

    def _lost(self) -> None:
        self._open.clear()
        for rid in self._sent:
            future = self._replies.get(rid)
            if future is not None and not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._sent.clear()

    async def _session(self, ws: Any) -> None:
        """One connection: resume (every wanted key, with `since`), then read and send until it closes."""
        self.connects += 1
        self._outbox.reset(time.monotonic())
        self._settle()
        self._open.set()
        self._set_state("open")
        reader = asyncio.create_task(self._read(ws), name="freshwire-read")
        sender = asyncio.create_task(self._send(ws), name="freshwire-send")
        try:
            done, _ = await asyncio.wait((reader, sender), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, sender):
                task.cancel()
            await asyncio.gather(reader, sender, return_exceptions=True)
        for task in done:
            task.result()  # the close (ConnectionClosed) or a fault

    async def _send(self, ws: Any) -> None:
        """Sends what the outbox allows, when it allows it."""
        while True:
            self._wake.clear()
            rid = self._next_id
            step = self._outbox.next(time.monotonic(), rid)
            self._settle()
            if isinstance(step, Frame):
                self._next_id += 1
                body: dict[str, Any] = {"op": step.op, "id": step.id, "keys": list(step.keys)}
                since = {k: self.versions.get(k) for k in step.keys if k in self._with_since}
                if step.op == "subscribe" and since:
                    body["since"] = since
                await ws.send(json.dumps(body))
            elif isinstance(step, Other):
                item_id, request = step.item
                self._sent.add(item_id)
                await ws.send(json.dumps({**request, "id": item_id}))
            else:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that lands while
                # the wake-up completes, and close() then waited forever for this task.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if step is None else step.seconds):
                        await self._wake.wait()

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "invalidate":
                if self.record:
                    self.received.extend(message["keys"].items())
                fresh = {k: v for k, v in message["keys"].items()
                         if k in self.versions and (self.versions[k] or "") < v}
                if fresh:
                    received = time.monotonic()
                    rows = message.get("data")
                    data = {k: rows[k] for k in fresh if k in rows} if isinstance(rows, dict) else {}
                    await self._batches.put(Batch(fresh, data))
                    self._received_at.append(received)
                    # Only once queued: a connection lost while the queue is full must not leave
                    # `versions` (what a resume asks `since`) ahead of what the app was handed.
                    self.versions.update(fresh)
                continue
            if kind == "lapse":  # after the invalidate it concerns: that batch is queued already
                self._lapse(message)
                continue
            now = time.monotonic()
            rid = message.get("id")
            if kind == "error" and message.get("code") == E.RATE_LIMITED:  # no id: a frame was dropped
                self._outbox.on_rate_limited(now)
            elif rid is not None and self._outbox.on_reply(message, now):
                if kind == "subscribed":
                    self._absorb(message)
            elif isinstance(rid, int) and rid in self._replies:
                future = self._replies[rid]
                if not future.done():
                    future.set_result(message)
                continue
            if kind == "error":
                self.errors.append(message)
            self._changed()

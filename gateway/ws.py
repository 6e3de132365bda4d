"""The WebSocket endpoint: moves frames between the socket and the pure Session / protocol core."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Histogram
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway import errors as E
from gateway import protocol
from gateway.auth import Grant, token_from
from gateway.awaits import TooManyAwaits
from gateway.backend import BackendUnavailable
from gateway.errors import AuthError, ProtocolError
from gateway.hub import Hub
from gateway.session import ControlOverflow, RateGuard, Session
from gateway.state import GatewayState
from gateway.tokens import parse_token
from gateway.uvicorn_ws import SINK_EXTENSION

log = logging.getLogger(__name__)
_ids = itertools.count(1)


async def _close(ws: WebSocket, state: GatewayState, code: int, reason: str) -> None:
    state.metrics.closes.labels(str(code)).inc()
    with contextlib.suppress(Exception):
        await ws.close(code, reason)


async def endpoint(ws: WebSocket) -> None:
    state: GatewayState = ws.app.state.fw
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None)
    try:
        grant = state.verifier.verify(token_from(ws))
    except AuthError as exc:
        await _close(ws, state, E.CLOSE_AUTH, exc.reason)
        return
    if len(state.hub.sessions) >= state.settings.max_connections:
        await _close(ws, state, E.CLOSE_OVER_CAPACITY, E.REASON_OVER_CAPACITY)
        return
    _forget_scope_headers(ws)
    session = Session(f"c{next(_ids)}", state.settings.control_queue, None, state.settings.max_data_bytes)
    state.hub.register(session)
    log.info("[%s] open sub=%s", session.conn_id, grant.subject)
    sink = sink_of(ws)
    if sink is not None:
        sink.limit_unread(state.settings.unread_bytes)
    conn = Connection(ws, state, session, grant, sink if state.settings.direct_writes else None, budget=sink)
    try:
        await conn.run()
    finally:
        state.hub.drop(session)
        log.info("[%s] closed", session.conn_id)


class Sink(Protocol):
    """A synchronous write path to one connection: the `freshwire.sink` ASGI extension of
    gateway/uvicorn_ws.py. Writing through it needs no task and no await, so fan-out hands each
    connection its frames as it goes, and only a connection whose transport is paused keeps them
    (coalesced, in its Session) until `on_writable`'s callback runs."""

    def sendable(self) -> bool: ...

    def write_texts(self, texts: list[str]) -> None: ...

    def on_writable(self, callback: Callable[[], None] | None) -> None: ...

    def holding(self) -> bool: ...

    def limit_unread(self, budget: int) -> None: ...


def sink_of(ws: WebSocket) -> Sink | None:
    extensions = ws.scope.get("extensions") or {}
    sink: Sink | None = extensions.get(SINK_EXTENSION)
    return sink


def _forget_scope_headers(ws: WebSocket) -> None:
    """The headers and the query (the token) are read at the handshake only, and a connection keeps its
    scope (shared with the server) for hours: drop them and Starlette's parsed copies, ~1.7 KB of the
    ~15 KB a connection costs. Nothing reads them later (the grant holds what the token said)."""
    ws.scope["headers"] = []
    ws.scope["query_string"] = b""
    for cached in ("_headers", "_query_params", "_url"):
        ws.__dict__.pop(cached, None)


def _nothing() -> None:
    pass


class Wake:
    """The writer's wake-up: an asyncio.Event for exactly one waiter, without the Event's deque
    (one per connection, so its size counts). `wait()` also clears it."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        while not self._set:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._set = False


class LagTally:
    """commit_to_send observations made during a fan-out pass, counted per (histogram, commit time) and
    observed once each at its end: the thousands of connections of one pass share a few commit times."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[Histogram, int], int] = {}

    def add(self, histogram: Histogram, commit_ms: int, hub: Hub) -> None:
        if not self.counts and not hub.defer(self.observe):
            observe_many(histogram, time.time() - commit_ms / 1000, 1)
            return
        key = (histogram, commit_ms)
        self.counts[key] = self.counts.get(key, 0) + 1

    def observe(self) -> None:
        counts, self.counts = self.counts, {}
        now = time.time()
        for (histogram, commit_ms), n in counts.items():
            observe_many(histogram, now - commit_ms / 1000, n)


lag_tally = LagTally()


def observe_many(histogram: Histogram, amount: float, n: int) -> None:
    """`n` observations of `amount` (at least 0) for the cost of one: Histogram.observe's own steps,
    done with a count of n (prometheus_client has no weighted observe)."""
    amount = max(0.0, amount)
    try:
        upper_bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:  # another prometheus_client layout: the public way
        for _ in range(n):
            histogram.observe(amount)
        return
    total.inc(amount * n)
    for i, bound in enumerate(upper_bounds):
        if amount <= bound:
            buckets[i].inc(n)
            break


@dataclass(frozen=True, slots=True)
class Ending:
    """A connection on its way out: the close to send, and the task sending it beside the reader
    (None: run() sends it once the reader stops). Like Starlette's WebSocketState, one value."""

    code: int
    reason: str
    sending: asyncio.Task[None] | None = None


class Connection:
    """One connection's I/O shell around its Session. Frames go out through ASGI `send` from a writer
    task of their own, or, with FRESHWIRE_DIRECT_WRITES and a server offering a Sink, through the Sink
    (written at once while the transport takes them, the Session coalescing what waits while it is
    paused)."""

    __slots__ = ("awaits", "budget", "ending", "grant", "out", "rate", "session", "sink", "state", "wake", "ws")

    def __init__(self, ws: WebSocket, state: GatewayState, session: Session, grant: Grant,
                 sink: Sink | None = None, budget: Sink | None = None) -> None:
        self.ws, self.state, self.session, self.grant, self.sink = ws, state, session, grant, sink
        # the server's unread budget (holding(): only replies go), on either write path
        self.budget = sink if budget is None else budget
        self.rate = RateGuard(state.settings.max_messages_per_s, state.settings.max_rate_strikes, time.monotonic())
        self.ending: Ending | None = None  # None while open: the lifecycle is this one field
        self.awaits: set[asyncio.Task[None]] | None = None  # made by the first await
        self.wake = Wake() if sink is None else None
        self.out: list[str] | None = None  # frames taken during a fan-out pass, written at its end
        session.wake = self._flush if sink is not None else self.wake.set  # type: ignore[union-attr]

    async def run(self) -> None:
        writer: asyncio.Task[None] | None = None
        if self.sink is not None:
            self.sink.on_writable(self._flush)
        else:
            writer = asyncio.create_task(self._writer(), name=f"writer-{self.session.conn_id}")
            writer.add_done_callback(self._supervise)
            if self.budget is not None and self.wake is not None:
                self.budget.on_writable(self.wake.set)  # acknowledged: what waited can go
        # A timer rather than a sleeping task: it is one per connection, and much smaller.
        loop = asyncio.get_running_loop()
        expiry = loop.call_at(loop.time() + max(0.0, self.grant.expires_at - time.time()), self._expire)
        try:
            await self._reader()
        except (WebSocketDisconnect, RuntimeError):
            pass
        except ControlOverflow as exc:
            self._end(E.CLOSE_POLICY, str(exc))
        finally:
            expiry.cancel()
            if self.budget is not None:
                self.budget.on_writable(None)
            if self.sink is not None:
                self.session.wake = _nothing
            for task in list(self.awaits or ()):
                task.cancel()
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            ending = self.ending
            if ending is not None and ending.sending is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ending.sending
            elif ending is not None:
                await _close(self.ws, self.state, ending.code, ending.reason)

    def _expire(self) -> None:
        self._close_now(E.CLOSE_AUTH, E.REASON_TOKEN_EXPIRED)

    def _end(self, code: int, reason: str) -> None:
        """Decide to close, from the reader: run() sends the close once the reader stops."""
        if self.ending is None:
            self.ending = Ending(code, reason)

    def _close_now(self, code: int, reason: str) -> None:
        """Close from beside the reader (which then sees the disconnect); the first reason wins."""
        if self.ending is not None and self.ending.sending is not None:
            return
        task = asyncio.create_task(_close(self.ws, self.state, code, reason), name=f"close-{self.session.conn_id}")
        self.ending = Ending(code, reason, task)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """A background task of this connection (its writer, an await) that died of an error: see _failed."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        self._failed(task.get_name().split("-", 1)[0], exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        """Logged with the connection id and the connection closed with 1011, never left silently
        half-alive; a client gone mid-write is not a failure (the reader ends the connection as usual)."""
        gone = WebSocketState.DISCONNECTED in (self.ws.client_state, self.ws.application_state)
        if isinstance(exc, (WebSocketDisconnect, OSError)) or (gone and isinstance(exc, RuntimeError)):
            return
        if isinstance(exc, ControlOverflow):
            self._close_now(E.CLOSE_POLICY, str(exc))
            return
        log.error("[%s] %s failed; closing with %s", self.session.conn_id, what, E.CLOSE_INTERNAL, exc_info=exc)
        self.state.metrics.task_failures.labels(what).inc()
        self._close_now(E.CLOSE_INTERNAL, E.REASON_INTERNAL)

    def _flush(self) -> None:
        """The Session's wake-up with a Sink: take what it has now and write it (at the end of the hub's
        fan-out pass when one runs, so the pass costs one write per connection), unless the transport
        is paused: then the Session keeps it, coalescing, and the Sink calls this again once it
        drains. Runs inside fan-out and request handling: never raises into them."""
        sink = self.sink
        assert sink is not None
        try:
            if not sink.sendable():
                return
            session = self.session
            frames = session.take(sink.holding())
            if not frames:
                return
            if session.taken_commit_ms:
                lag_tally.add(self.state.metrics.commit_to_send, session.taken_commit_ms, self.state.hub)
            if self.out is not None:
                self.out += frames
            elif self.state.hub.defer(self._write_out):
                self.out = frames
            else:
                sink.write_texts(frames)
        except Exception as exc:
            self._broken(exc)

    def _write_out(self) -> None:
        """The frames deferred to the end of a fan-out pass (nothing can close or pause the transport
        between their take() and this: the pass runs without a switch)."""
        out, self.out = self.out, None
        try:
            if out and self.sink is not None:
                self.sink.write_texts(out)
        except Exception as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        self.session.wake = _nothing  # closing: nothing more is written
        self._failed("writer", exc)

    async def _writer(self) -> None:
        assert self.wake is not None
        while True:
            await self.wake.wait()
            budget = self.budget
            for frame in self.session.take(budget is not None and budget.holding()):
                await self.ws.send_text(frame)
            if self.session.taken_commit_ms:
                lag = time.time() - self.session.taken_commit_ms / 1000
                self.state.metrics.commit_to_send.observe(max(0.0, lag))

    def _error(self, exc: ProtocolError) -> None:
        self.state.metrics.errors.labels(exc.code).inc()
        self.session.control(protocol.error_of(exc))

    async def _reader(self) -> None:
        settings = self.state.settings
        while self.ending is None:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            verdict = self.rate.admit(time.monotonic())  # every frame counts, binary ones too
            if verdict == "close":
                self._end(E.CLOSE_POLICY, E.REASON_RATE)
                return
            if verdict == "limited":
                self._error(ProtocolError(E.RATE_LIMITED, f"at most {settings.max_messages_per_s:g} messages/s"))
                continue
            text = message.get("text")
            if text is None:
                self._error(ProtocolError(E.BINARY_UNSUPPORTED, "send JSON text frames"))
                continue
            try:
                request = protocol.parse_request(text, settings.max_subscriptions, settings.await_max_ms)
                await self._handle(request)
            except ProtocolError as exc:
                self._error(exc)
            if len(self.session.controls) >= self.session.control_limit // 2:
                # Frames already buffered are read without the loop ever switching tasks: let the writer
                # send the replies, so a client that reads continuously is never closed as "unread".
                await asyncio.sleep(0)

    async def _handle(self, request: protocol.Request) -> None:
        if isinstance(request, protocol.Subscribe):
            await self._subscribe(request)
        elif isinstance(request, protocol.Unsubscribe):
            gone = self.session.unsubscribe(request.keys)
            self.state.hub.remove(self.session, gone)
            self.session.control(protocol.unsubscribed(request.id, request.keys))
        elif isinstance(request, protocol.Ping):
            self.session.control(protocol.pong(request.id))
        else:
            self._start_await(request)

    def _start_await(self, request: protocol.Await) -> None:
        tx_id = parse_token(request.token, request.id)
        if self.awaits is None:
            self.awaits = set()
        if len(self.awaits) >= self.state.settings.max_awaits_per_connection:
            raise ProtocolError(E.TOO_MANY_AWAITS, "too many pending awaits on this connection", request.id)
        task = asyncio.create_task(self._await(request, tx_id), name=f"await-{self.session.conn_id}")
        self.awaits.add(task)
        task.add_done_callback(self.awaits.discard)
        task.add_done_callback(self._supervise)

    async def _await(self, request: protocol.Await, tx_id: str) -> None:
        """Runs beside the reader, so a pending await never delays other requests. A reply that does
        not fit the reply queue (ControlOverflow) closes the connection with 4008 (_supervise)."""
        watermark = self.state.pump.watermark
        try:
            version = await self.state.awaits.wait(self.state.backend, tx_id, request.timeout_ms / 1000,
                                                   delivered=lambda: watermark.value)
        except TooManyAwaits:
            self._error(ProtocolError(E.TOO_MANY_AWAITS, "too many pending awaits, retry", request.id))
            return
        except BackendUnavailable:
            self._error(ProtocolError(E.UNAVAILABLE, "version store unavailable, retry", request.id))
            return
        if version is None:
            self._error(ProtocolError(E.TIMEOUT, f"not released within {request.timeout_ms} ms", request.id))
        else:
            # After the invalidations of its own transaction on this connection, which the hub has
            # handed to the session by now (the release is delivered before awaits are resolved).
            self.session.control_after_pending(protocol.visible(request.id, request.token, version))

    async def _subscribe(self, request: protocol.Subscribe) -> None:
        forbidden = [k for k in request.keys if not self.grant.allows(k)]
        keys = tuple(k for k in request.keys if k not in forbidden)
        if forbidden:
            self._error(ProtocolError(E.FORBIDDEN, "the token does not cover these keys", request.id,
                                      keys=forbidden[:100]))
            if not keys:
                return
        total = len(set(self.session.known) | set(keys))
        if total > self.state.settings.max_subscriptions:
            raise ProtocolError(E.TOO_MANY_KEYS, f"at most {self.state.settings.max_subscriptions} keys "
                                "per connection", request.id)
        new = self.session.begin_subscribe(keys)
        self.state.hub.add(self.session, new)
        try:
            current = await self.state.backend.read_versions(keys)
            watermark = await self.state.backend.watermark()
        except BackendUnavailable:
            self.session.abort_subscribe(keys, new)
            self.state.hub.remove(self.session, new)
            raise ProtocolError(E.UNAVAILABLE, "version store unavailable, retry", request.id) from None
        since = {k: v for k, v in request.since.items() if k in current}
        self.session.finish_subscribe(request.id, current, since, watermark)

"""The WebSocket endpoint: moves frames between the socket and the pure Session / protocol core."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from gateway import errors as E
from gateway import protocol
from gateway.auth import Grant, token_from
from gateway.awaits import TooManyAwaits
from gateway.backend import BackendUnavailable
from gateway.errors import AuthError, ProtocolError
from gateway.session import ControlOverflow, RateGuard, Session
from gateway.state import GatewayState
from gateway.tokens import parse_token

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
    wake = Wake()
    session = Session(f"c{next(_ids)}", state.settings.control_queue, wake.set, state.settings.max_data_bytes)
    state.hub.register(session)
    log.info("[%s] open sub=%s", session.conn_id, grant.subject)
    conn = Connection(ws, state, session, wake, grant)
    try:
        await conn.run()
    finally:
        state.hub.drop(session)
        log.info("[%s] closed", session.conn_id)


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


@dataclass(frozen=True, slots=True)
class Ending:
    """A connection on its way out: the close to send, and the task sending it beside the reader
    (None: run() sends it once the reader stops). Like Starlette's WebSocketState, one value."""

    code: int
    reason: str
    sending: asyncio.Task[None] | None = None


class Connection:
    __slots__ = ("awaits", "ending", "grant", "rate", "session", "state", "wake", "ws")

    def __init__(self, ws: WebSocket, state: GatewayState, session: Session, wake: Wake, grant: Grant) -> None:
        self.ws, self.state, self.session, self.wake, self.grant = ws, state, session, wake, grant
        self.rate = RateGuard(state.settings.max_messages_per_s, state.settings.max_rate_strikes, time.monotonic())
        self.ending: Ending | None = None  # None while open: the lifecycle is this one field
        self.awaits: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer(), name=f"writer-{self.session.conn_id}")
        writer.add_done_callback(self._supervise)
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
            writer.cancel()
            for task in list(self.awaits):
                task.cancel()
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
        """A background task of this connection (its writer, an await) that died of an error: logged
        with the connection id and the connection closed with 1011, never left silently half-alive."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        gone = WebSocketState.DISCONNECTED in (self.ws.client_state, self.ws.application_state)
        if isinstance(exc, (WebSocketDisconnect, OSError)) or (gone and isinstance(exc, RuntimeError)):
            return  # the client went away mid-write: the reader ends the connection as usual
        if isinstance(exc, ControlOverflow):
            self._close_now(E.CLOSE_POLICY, str(exc))
            return
        log.error("[%s] %s failed; closing with %s", self.session.conn_id, task.get_name(), E.CLOSE_INTERNAL,
                  exc_info=exc)
        self.state.metrics.task_failures.labels(task.get_name().split("-", 1)[0]).inc()
        self._close_now(E.CLOSE_INTERNAL, E.REASON_INTERNAL)

    async def _writer(self) -> None:
        while True:
            await self.wake.wait()
            for frame in self.session.take():
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

"""uvicorn's sans-I/O websockets protocol with a direct write path for the gateway's frames.

ASGI makes every frame a coroutine chain (Starlette -> uvicorn `send` -> websockets `send_text` ->
transport) and needs a task to await it. Fan-out sends the same small text frame to thousands of
connections, so this protocol offers the app, as the ASGI extension `freshwire.sink` in the scope of an
accepted connection, a synchronous path instead: `sendable()` says whether a write would go out now
(the connection is open and its transport is below its write-buffer high-water mark), `write_texts()`
writes whole text frames to the transport (each frame encoded once, whoever it goes to), and
`on_writable()` registers the callback run when a paused transport drains or a held one is
acknowledged, and `holding()` says the client has its unread budget (`limit_unread()`) unacknowledged:
then only replies go, and invalidations wait. The acknowledgement pings and their pongs are this
protocol's; everything else (the handshake, keepalive pings, closes, reads) is uvicorn's. The app
keeps its plain ASGI path where the extension is absent (another server, Starlette's TestClient).

Frames written here are whole frames, written between the protocol's own writes on the one event loop,
so they never interleave with a control frame. With permessage-deflate negotiated they go through the
websockets protocol (compression needs its state), a little slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State

SINK_EXTENSION = "freshwire.sink"
FRAME_CACHE_SIZE = 1024  # frames fan-out sends to many connections: encoded once each
# Bytes the kernel may hold unsent per connection (TCP_NOTSENT_LOWAT). Without it the send buffer
# autotunes up to net.ipv4.tcp_wmem's maximum (4 MB by default) for a client that stops reading, all of
# it already-encoded frames the gateway can no longer coalesce; with it the kernel refuses more once
# this much waits, the transport buffers the rest and pauses, and the Session coalesces from there.
NOTSENT_LOWAT_BYTES = 16384
# Bytes of frames a client may have unread: written, but not yet acknowledged by its pong to a ping sent
# after them. TCP cannot say what a client has read (on loopback everything is ACKed into its receive
# buffer, which autotunes to megabytes: a client that read slower than its keys changed was measured
# 9-14 s behind on both write paths, bench/slow_reader.py), but a WebSocket pong can: a client answers
# a ping only after reading every frame before it (RFC 6455 5.5.2-3). Past this budget the connection
# holds its invalidations (they coalesce in its Session; replies and closes still go) until a pong
# comes. A ping goes out after every half budget, at most two in flight, so a prompt reader's pong is
# back before the budget is spent while a round trip carries less than it. The app sets it per
# connection (`limit_unread`, from FRESHWIRE_UNREAD_BYTES, before its first write); 0 turns it off.
UNREAD_BUDGET_BYTES = 16384
ACK_PING_PREFIX = b"fw-ack"


@functools.lru_cache(maxsize=FRAME_CACHE_SIZE)
def text_frame(text: str) -> bytes:
    """`text` as one unmasked, final WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    payload = text.encode()
    n = len(payload)
    head = bytes((0x80 | Opcode.TEXT.value,))
    if n < 126:
        return head + bytes((n,)) + payload
    if n < 1 << 16:
        return head + bytes((126,)) + n.to_bytes(2, "big") + payload
    return head + bytes((127,)) + n.to_bytes(8, "big") + payload


class Inbox:
    """What uvicorn uses of its asyncio.Queue of received events, without its three deques (~2.3 KB per
    connection): a list, and the futures of the receive() calls waiting on it."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        self.items.append(item)
        _wake_first(self.waiters)

    def empty(self) -> bool:
        return not self.items

    async def get(self) -> Any:
        while not self.items:
            if self.waiters is None:
                self.waiters = []
            await _wait(self.waiters)
        item = self.items.pop(0)
        if self.items:
            _wake_first(self.waiters)  # a receive() still waiting gets the next one
        return item


class Flag:
    """What uvicorn uses of its asyncio.Event `writable` (set, clear, is_set, wait), without the Event's
    deque (~0.8 KB per connection)."""

    __slots__ = ("value", "waiters")

    def __init__(self, value: bool) -> None:
        self.value = value
        self.waiters: list[asyncio.Future[None]] | None = None

    def set(self) -> None:
        self.value = True
        waiters, self.waiters = self.waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self.value = False

    def is_set(self) -> bool:
        return self.value

    async def wait(self) -> bool:
        while not self.value:
            if self.waiters is None:
                self.waiters = []
            await _wait(self.waiters)
        return True


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(future)
    try:
        await future
    finally:
        if future in waiters:
            waiters.remove(future)


def _wake_first(waiters: list[asyncio.Future[None]] | None) -> None:
    for waiter in waiters or ():
        if not waiter.done():
            waiter.set_result(None)
            return


class FreshwireWebSocketProtocol(WebSocketsSansIOProtocol):
    """`python -m gateway`'s WebSocket protocol (uvicorn `ws=`): uvicorn's, plus `freshwire.sink`, and
    lighter per connection (the gateway holds 20,000 of them): no deques, and the handshake's request
    and response are dropped once it is done."""

    drained: Callable[[], None] | None = None
    paused = False  # the transport's write buffer is above its high-water mark
    held = False  # unread_budget bytes or more written and not yet acknowledged by a pong
    unread_budget = UNREAD_BUDGET_BYTES
    written = 0  # bytes of data frames written, since the handshake
    acked = 0  # of them, those the client has read (its pong to a ping sent after them came back)
    pings = 0  # pings sent (acknowledgement and keepalive), to order them
    ack_pings: tuple[tuple[int, int], ...] = ()  # acknowledgement pings in flight (at most 2): seq, mark
    keepalive_ping: tuple[int, int] = (0, 0)  # uvicorn's last keepalive ping: seq, mark

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.send":
            self._wrote(len(message.get("text") or message.get("bytes") or b""))
        elif self.handshake_complete and getattr(self, "response", None) is not None:
            self._forget_handshake_objects()

    def _forget_handshake_objects(self) -> None:
        """Drop what only the handshake reads (~3 KB; the connection lives on for hours): uvicorn's
        request and response, and the websockets parser that still holds the request in its frame. It
        is swapped for the frame parser it runs from now on (as websockets itself swaps parsers), only
        while nothing of a frame is buffered, so the new one starts exactly where the old one stood."""
        self.request = None  # type: ignore[assignment]
        self.response = None  # type: ignore[assignment]
        conn = self.conn
        if conn.state is State.OPEN and not conn.reader.buffer and conn.parser_exc is None:
            parser = Protocol.parse(conn)
            next(parser)
            conn.parser = parser

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the app task is created, not started: it sees the extension
            extensions: dict[str, object] = self.scope["extensions"]  # type: ignore[assignment]
            extensions[SINK_EXTENSION] = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError, AttributeError):  # not Linux/macOS: the kernel's default
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT_BYTES)

    # -- the sink
    def sendable(self) -> bool:
        """True when a frame written now goes out in order: accepted (the app asks only after that), no
        close sent (by the app, a keepalive timeout or a protocol error) or received (the transport is
        then closing), and the transport below its high-water mark (not paused)."""
        return not (self.paused or self.close_sent or self.transport.is_closing()) and self.conn.state is State.OPEN

    def holding(self) -> bool:
        """True while the client has the unread budget or more unacknowledged: write replies only."""
        return self.held

    def write_texts(self, texts: list[str]) -> None:
        """Whole text frames, in order; call only when sendable()."""
        if self.conn.extensions:
            for text in texts:
                self.conn.send_text(text.encode())
            data = b"".join(self.conn.data_to_send())
        elif len(texts) == 1:
            data = text_frame(texts[0])
        else:
            data = b"".join(map(text_frame, texts))
        self.transport.write(data)
        self._wrote(len(data))

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        self.drained = callback

    def limit_unread(self, budget: int) -> None:
        """Bytes the client may have unread before its invalidations wait (0: no limit); set it before the
        first write (a budget lowered while holding would not release until the next pong)."""
        if budget != self.unread_budget:  # the default stays on the class: no attribute per connection
            self.unread_budget = budget

    # -- what the client has read: acknowledgement pings
    def _wrote(self, n: int) -> None:
        self.written += n
        budget = self.unread_budget
        if budget:
            self._ping_if_due(budget)
            if self.written - self.acked >= budget:
                self.held = True

    def _ping_if_due(self, budget: int) -> None:
        """An acknowledgement ping once half a budget has been written since the last one (or since the
        last acknowledgement), unless two are in flight already."""
        since = self.ack_pings[-1][1] if self.ack_pings else self.acked
        if self.written - since < budget // 2 or len(self.ack_pings) >= 2:
            return
        if self.close_sent or self.conn.state is not State.OPEN or self.transport.is_closing():
            return
        self.pings += 1
        self.ack_pings = (*self.ack_pings, (self.pings, self.written))
        self.conn.send_ping(ACK_PING_PREFIX + self.pings.to_bytes(8, "big"))
        self.transport.write(b"".join(self.conn.data_to_send()))

    def send_keepalive_ping(self) -> None:
        self.pings += 1
        self.keepalive_ping = (self.pings, self.written)
        super().send_keepalive_ping()

    def handle_pong(self, event: Frame) -> None:
        """A pong acknowledges what was written before its ping. A client may answer only the latest of
        several pings (RFC 6455 5.5.3), so a pong to a later ping answers the earlier ones too, uvicorn's
        keepalive ping included."""
        data = bytes(event.data)
        keepalive = self.pending_ping_payload
        seq = int.from_bytes(data[len(ACK_PING_PREFIX):], "big") if data.startswith(ACK_PING_PREFIX) else 0
        mark = next((m for s, m in self.ack_pings if s == seq), None) if seq else None
        if mark is not None:
            self.acked = max(self.acked, mark)
            self.ack_pings = tuple(p for p in self.ack_pings if p[0] > seq)
            if keepalive is not None and self.keepalive_ping[0] < seq:
                super().handle_pong(Frame(Opcode.PONG, keepalive))
        elif keepalive is not None and data == keepalive:
            seq, mark = self.keepalive_ping
            self.acked = max(self.acked, mark)
            self.ack_pings = tuple(p for p in self.ack_pings if p[0] > seq)
            super().handle_pong(event)
        else:
            super().handle_pong(event)
            return
        self._acknowledged()

    def _acknowledged(self) -> None:
        budget = self.unread_budget
        if budget:
            self._ping_if_due(budget)
        if self.held and self.written - self.acked < budget:
            self.held = False
            if self.drained is not None:
                self.drained()

    # -- uvicorn's callbacks, extended
    def pause_writing(self) -> None:
        self.paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        super().resume_writing()
        if self.drained is not None:
            self.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drained = None
        super().connection_lost(exc)



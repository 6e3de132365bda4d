"""uvicorn's sans-I/O websockets protocol with a direct write path for the gateway's frames.

ASGI makes every frame a coroutine chain (Starlette -> uvicorn `send` -> websockets `send_text` ->
transport) and needs a task to await it. Fan-out sends the same small text frame to thousands of
connections, so this protocol offers the app, as the ASGI extension `freshwire.sink` in the scope of an
accepted connection, a synchronous path instead: `sendable()` says whether a write would go out now
(the connection is open and its transport is below its write-buffer high-water mark), `write_texts()`
writes whole text frames to the transport (each frame encoded once, whoever it goes to), and
`on_writable()` registers the callback run when a paused transport drains. Everything else (the
handshake, pings, closes, reads) is uvicorn's, unchanged; the app keeps its plain ASGI path where the
extension is absent (another server, Starlette's TestClient).

Frames written here are whole frames, written between the protocol's own writes on the one event loop,
so they never interleave with a control frame. With permessage-deflate negotiated they go through the
websockets protocol (compression needs its state), a little slower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from websockets.frames import Opcode
from websockets.protocol import State
from websockets.http11 import Request
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

SINK_EXTENSION = "freshwire.sink"
FRAME_CACHE_SIZE = 1024  # frames fan-out sends to many connections: encoded once each


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


class FreshwireWebSocketProtocol(WebSocketsSansIOProtocol):
    """`python -m gateway`'s WebSocket protocol (uvicorn `ws=`): uvicorn's, plus `freshwire.sink`."""

    drained: Callable[[], None] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101:  # the app task is created, not started: it sees the extension
            self.scope["extensions"][SINK_EXTENSION] = self  # type: ignore[index]

    # -- the sink
    def sendable(self) -> bool:
        """True when a frame written now goes out in order: accepted, no close sent or received, and the
        transport below its high-water mark (uvicorn's `writable` is set while it is not paused)."""
        return (self.handshake_complete and not self.close_sent and not self.disconnected
                and self.writable.is_set() and self.conn.state is State.OPEN
                and not self.transport.is_closing())

    def write_texts(self, texts: list[str]) -> None:
        """Whole text frames, in order; call only when sendable()."""
        if self.conn.extensions:
            for text in texts:
                self.conn.send_text(text.encode())
            self.transport.write(b"".join(self.conn.data_to_send()))
        elif len(texts) == 1:
            self.transport.write(text_frame(texts[0]))
        else:
            self.transport.write(b"".join(map(text_frame, texts)))

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        self.drained = callback

    # -- uvicorn's callbacks, extended
    def resume_writing(self) -> None:
        super().resume_writing()
        if self.drained is not None:
            self.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.drained = None
        super().connection_lost(exc)



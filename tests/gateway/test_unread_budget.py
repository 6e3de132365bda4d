"""What a client has not read yet is bounded (gateway/uvicorn_ws.py, FRESHWIRE_UNREAD_BYTES): the gateway
pings after every half budget of frames, a client's pong says it read everything before that ping, and
past the budget its invalidations wait, coalescing in its Session instead of queueing, stale, in its
socket buffers; replies and closes still go. Real uvicorn server, real sockets; real websockets
clients, and a raw one that answers pings only when told to."""

from __future__ import annotations

import asyncio
import gc
import json
import os
from base64 import b64encode
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from gw_support import token, ver
from test_client_resume import serve
from test_fanout_direct import received_bytes
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.typing import Subprotocol

from gateway.backend_memory import MemoryBackend
from gateway.errors import SettingsError
from gateway.settings import MIN_UNREAD_BYTES, load_gateway_settings
from gateway.uvicorn_ws import FreshwireWebSocketProtocol
from gateway.ws import Connection

BUDGET = 4096
VERSIONS = 5000


async def _stalled_reader_backlog(direct_writes: bool, unread_bytes: int) -> tuple[int, list[str], int]:
    """A client that stops reading while VERSIONS versions of its key are released, one fan-out pass each;
    then it reads again. Returns (bytes its kernel had received when it resumed, the versions it read
    up to the newest, changes its Session coalesced)."""
    backend = MemoryBackend()
    async with serve(backend, direct_writes=direct_writes, unread_bytes=unread_bytes) as (url, state), \
            connect(f"{url}?token={token()}", subprotocols=[Subprotocol("freshwire.v1")], max_queue=4) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": ["k"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        (session,) = state.hub.sessions
        for n in range(1, VERSIONS + 1):
            backend.release(ver(n), ["k"])
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # what was written reaches the client's kernel
        backlog = received_bytes(ws.transport.get_extra_info("socket"))
        seen: list[str] = []
        while not seen or seen[-1] != ver(VERSIONS):
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["keys"]["k"])
        return backlog, seen, session.coalesced


@pytest.mark.parametrize("direct_writes", [False, True], ids=["writer-task", "direct"])
async def test_a_stalled_reader_has_at_most_its_budget_unread_then_reads_the_newest(direct_writes: bool) -> None:
    backlog, seen, coalesced = await _stalled_reader_backlog(direct_writes, BUDGET)
    # the handshake, the subscribe reply, the budget, the frame that crossed it and the ping
    assert backlog < 2 * BUDGET
    # what the client's own library had queued before it stopped reading its socket (it answered the
    # pings until then), the budget's frames (~80 bytes each), then the newest
    assert len(seen) < VERSIONS // 5
    assert seen == sorted(set(seen)) and seen[-1] == ver(VERSIONS)
    assert coalesced > VERSIONS // 2


async def test_without_a_budget_the_stalled_reader_queues_far_more() -> None:
    """The same client with FRESHWIRE_UNREAD_BYTES=0: the kernel's buffers take many times the budget,
    every frame of it stale by the time the client reads it (what the budget removes)."""
    backlog, seen, coalesced = await _stalled_reader_backlog(True, 0)
    assert backlog > 8 * BUDGET
    assert len(seen) > VERSIONS // 2 and coalesced < VERSIONS // 2  # queued, not coalesced


async def test_a_prompt_reader_gets_every_version_with_keepalive_pings_in_between() -> None:
    """Acknowledgement pings and uvicorn's keepalive pings (every 0.05 s here, each with a pong deadline)
    interleave; the reader answers all of them, is never held for long and never closed for a late pong."""
    backend = MemoryBackend()
    async with serve(backend, direct_writes=True, unread_bytes=MIN_UNREAD_BYTES) as (url, state), \
            connect(f"{url}?token={token()}", subprotocols=[Subprotocol("freshwire.v1")]) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": ["k"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        (server,) = state.hub.sessions
        conn = getattr(server.wake, "__self__", None)
        assert isinstance(conn, Connection) and isinstance(conn.sink, FreshwireWebSocketProtocol)
        protocol = conn.sink
        protocol.stop_keepalive()
        protocol.ping_interval, protocol.ping_timeout = 0.05, 2.0  # keepalive pings at 20 Hz, with a deadline
        protocol.start_keepalive()
        seen: list[str] = []

        async def read() -> None:
            while not seen or seen[-1] != ver(2000):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["keys"]["k"])

        reading = asyncio.create_task(read())
        for n in range(1, 2001):
            backend.release(ver(n), ["k"])
            await asyncio.sleep(0.0005 if n % 10 == 0 else 0)
        await reading
        assert seen == sorted(set(seen)) and seen[-1] == ver(2000)
        assert server.coalesced < 1000  # held only briefly: most versions went out one by one
        assert protocol.acked > 0 and not protocol.held  # acknowledgement pings were sent and answered
        await ws.send(json.dumps({"op": "ping", "id": 2}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "id": 2}


@pytest.mark.parametrize("value", ["1023", "-1", "lots"])
def test_unread_bytes_out_of_range_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", "x" * 48)
    monkeypatch.setenv("FRESHWIRE_UNREAD_BYTES", value)
    with pytest.raises(SettingsError, match="FRESHWIRE_UNREAD_BYTES"):
        load_gateway_settings()


@pytest.mark.parametrize(("value", "budget"), [("0", 0), ("1024", 1024), (None, 16384)])
def test_unread_bytes_zero_turns_it_off_and_the_default_is_16_kib(monkeypatch: pytest.MonkeyPatch,
                                                                  value: str | None, budget: int) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", "x" * 48)
    if value is None:
        monkeypatch.delenv("FRESHWIRE_UNREAD_BYTES", raising=False)
    else:
        monkeypatch.setenv("FRESHWIRE_UNREAD_BYTES", value)
    assert load_gateway_settings().unread_bytes == budget


# -- a raw client: it reads every frame, and answers a ping only when the test says so


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pings: list[bytes] = []  # pings received and not answered yet
        self.versions: list[str] = []

    async def frame(self, timeout_s: float = 5.0) -> tuple[Opcode, bytes]:
        async def one() -> tuple[Opcode, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n >= 126:
                n = int.from_bytes(await self.reader.readexactly(2 if n == 126 else 8), "big")
            return Opcode(b0 & 0x0F), await self.reader.readexactly(n)
        return await asyncio.wait_for(one(), timeout_s)

    async def next_reply(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The next text frame that is not an invalidate (pings are kept, invalidates counted)."""
        while True:
            opcode, payload = await self.frame(timeout_s)
            if opcode is Opcode.PING:
                self.pings.append(payload)
            elif opcode is Opcode.TEXT:
                message: dict[str, Any] = json.loads(payload)
                if message.get("type") != "invalidate":
                    return message
                self.versions.append(message["keys"]["k"])
            elif opcode is Opcode.CLOSE:
                return {"type": "close", "code": int.from_bytes(payload[:2], "big")}

    async def read_until(self, version: str, answer_at: int = 0) -> None:
        """Read invalidates until `version` arrives; pings are kept, and with `answer_at` the latest is
        answered once that many wait. Any other frame fails the test."""
        while version not in self.versions:
            opcode, payload = await self.frame()
            if opcode is Opcode.PING:
                self.pings.append(payload)
                if answer_at and len(self.pings) >= answer_at:
                    self.answer_latest_ping()
            elif opcode is Opcode.TEXT:
                self.versions.append(json.loads(payload)["keys"]["k"])
            else:
                raise AssertionError(f"{opcode.name} frame: {payload!r}")

    def send(self, opcode: Opcode, payload: bytes) -> None:
        self.writer.write(Frame(opcode, payload).serialize(mask=True))

    def answer_latest_ping(self) -> None:
        """A pong to the latest ping only (RFC 6455 5.5.3 allows skipping the earlier ones)."""
        if self.pings:
            self.send(Opcode.PONG, self.pings[-1])
            self.pings = []


@asynccontextmanager
async def raw_client(url: str, tok: str) -> AsyncIterator[RawClient]:
    host_port = url.removeprefix("ws://").split("/", 1)[0]
    host, port = host_port.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?token={tok} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: freshwire.v1\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    client = RawClient(reader, writer)
    try:
        client.send(Opcode.TEXT, json.dumps({"op": "subscribe", "id": 1, "keys": ["k"]}).encode())
        assert (await client.next_reply())["type"] == "subscribed"
        yield client
    finally:
        writer.close()


def _protocol_of(state: Any) -> FreshwireWebSocketProtocol:
    """The server side of the one connection: its Connection's budget (the direct path wakes the
    Connection itself, the writer-task path its Wake, which only the Connection refers to)."""
    (session,) = state.hub.sessions
    owner = getattr(session.wake, "__self__", None)
    conn = owner if isinstance(owner, Connection) else next(
        r for r in gc.get_referrers(owner) if isinstance(r, Connection))
    assert isinstance(conn.budget, FreshwireWebSocketProtocol)
    return conn.budget


async def _hold(backend: MemoryBackend, protocol: FreshwireWebSocketProtocol) -> int:
    """Release versions (the client reads them, answering no ping) until the budget is spent; the last n."""
    n = 0
    while not protocol.holding():
        n += 1
        backend.release(ver(n), ["k"])
        await asyncio.sleep(0)
        assert n < 1000, "never held"
    return n


@pytest.mark.parametrize("direct_writes", [False, True], ids=["writer-task", "direct"])
async def test_replies_still_go_while_invalidations_wait_for_the_pong(direct_writes: bool) -> None:
    backend = MemoryBackend()
    async with serve(backend, direct_writes=direct_writes, unread_bytes=MIN_UNREAD_BYTES) as (url, state), \
            raw_client(url, token()) as client:
        protocol = _protocol_of(state)
        protocol.stop_keepalive()
        n = await _hold(backend, protocol)
        for extra in range(1, 6):  # released while held: they wait, coalescing
            backend.release(ver(n + extra), ["k"])
        client.send(Opcode.TEXT, json.dumps({"op": "ping", "id": 9}).encode())
        assert await client.next_reply() == {"type": "pong", "id": 9}  # the reply did not wait
        assert ver(n + 5) not in client.versions and protocol.holding()
        client.answer_latest_ping()  # the pong: what waited goes, coalesced into the newest version
        await client.read_until(ver(n + 5))
        assert ver(n + 1) not in client.versions  # coalesced


@pytest.mark.parametrize("direct_writes", [False, True], ids=["writer-task", "direct"])
async def test_a_held_connection_is_still_closed_at_once_when_its_token_expires(direct_writes: bool) -> None:
    """A close is not held by the budget, even with keepalive pings off (nothing else would end it)."""
    backend = MemoryBackend()
    async with serve(backend, direct_writes=direct_writes, unread_bytes=MIN_UNREAD_BYTES) as (url, state), \
            raw_client(url, token(ttl_s=2)) as client:
        protocol = _protocol_of(state)
        protocol.stop_keepalive()
        await _hold(backend, protocol)
        assert (await client.next_reply(timeout_s=5))["code"] == 4001


async def test_a_client_that_answers_only_the_latest_ping_is_neither_held_nor_closed() -> None:
    """Acknowledgement pings and uvicorn's keepalive pings (10 Hz, a 1 s pong deadline); the client
    answers only the latest of the pings it has, so most pongs answer several pings at once."""
    backend = MemoryBackend()
    async with serve(backend, direct_writes=True, unread_bytes=MIN_UNREAD_BYTES) as (url, state), \
            raw_client(url, token()) as client:
        protocol = _protocol_of(state)
        protocol.stop_keepalive()
        protocol.ping_interval, protocol.ping_timeout = 0.1, 1.0
        protocol.start_keepalive()
        versions = 600

        async def answer_stragglers() -> None:  # a lone ping is answered after a while, as the latest
            while True:
                await asyncio.sleep(0.05)
                client.answer_latest_ping()

        reading = asyncio.create_task(client.read_until(ver(versions), answer_at=2))
        straggling = asyncio.create_task(answer_stragglers())
        for n in range(1, versions + 1):  # ~3 s: keepalive deadlines pass many times meanwhile
            backend.release(ver(n), ["k"])
            await asyncio.sleep(0.005)
        await asyncio.wait_for(reading, 10)
        straggling.cancel()
        assert client.versions == sorted(set(client.versions)) and client.versions[-1] == ver(versions)
        assert protocol.acked > 0 and not protocol.close_sent

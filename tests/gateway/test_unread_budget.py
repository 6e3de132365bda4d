"""What a client has not read yet is bounded (gateway/uvicorn_ws.py, FRESHWIRE_UNREAD_BYTES): the gateway
pings after every half budget of frames, a client's pong says it read everything before that ping, and
past the budget the connection counts as paused, so its changes coalesce in its Session instead of
queueing, stale, in its socket buffers. Real uvicorn server, real sockets, real websockets clients."""

from __future__ import annotations

import asyncio
import json

import pytest
from gw_support import token, ver
from test_client_resume import serve
from test_fanout_direct import received_bytes
from websockets.asyncio.client import connect
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
        protocol.ping_interval = protocol.ping_timeout = 0.05  # keepalive pings at 20 Hz, each with a deadline
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
        assert protocol.pings > 10 and not protocol.held  # acknowledgement pings were sent and answered
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

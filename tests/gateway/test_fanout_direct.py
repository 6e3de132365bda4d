"""Issue #15's write path: with a Sink (gateway/uvicorn_ws.py) a connection's frames are written when
fan-out wakes it, once per fan-out pass, and only a connection whose transport is paused keeps its
changes, coalesced per key, until the transport drains; the frame encoding and the lighter queue and
event the protocol uses in place of asyncio's."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from gw_support import SECRET, token, ver
from test_client_resume import serve
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader
from websockets.typing import Subprotocol

from contract.redis_layout import Published
from gateway import errors as E
from gateway.app import create_app
from gateway.auth import Grant
from gateway.backend_memory import MemoryBackend
from gateway.pump import DELIVER_EACH
from gateway.session import Session
from gateway.settings import GatewaySettings
from gateway.state import GatewayState
from gateway.uvicorn_ws import NOTSENT_LOWAT_BYTES, Flag, Inbox, text_frame
from gateway.ws import Connection


class FakeSink:
    """A transport that is open, or paused (`sendable` False), and records each write."""

    def __init__(self) -> None:
        self.open = True
        self.writes: list[list[dict[str, Any]]] = []
        self.drained: Any = None
        self.fail = False

    def sendable(self) -> bool:
        return self.open

    def holding(self) -> bool:
        return False

    def limit_unread(self, budget: int) -> None:
        pass

    def write_texts(self, texts: list[str]) -> None:
        if self.fail:
            raise ValueError("injected write failure")
        self.writes.append([json.loads(t) for t in texts])

    def on_writable(self, callback: Any) -> None:
        self.drained = callback


class FakeWebSocket:
    client_state = application_state = None


def rig(keys: tuple[str, ...] = ("k",)) -> tuple[GatewayState, Session, FakeSink, Connection]:
    settings = GatewaySettings(jwt_secret=SECRET, redis_url="memory://", direct_writes=True)
    app = create_app(settings, backend=MemoryBackend())
    state: GatewayState = app.state.fw
    session = Session("c1")
    sink = FakeSink()
    conn = Connection(FakeWebSocket(), state, session, Grant("t", ("*",), time.time() + 3600),  # type: ignore[arg-type]
                      sink)
    sink.on_writable(conn._flush)
    state.hub.register(session)
    new = session.begin_subscribe(keys)
    state.hub.add(session, new)
    session.finish_subscribe(1, dict.fromkeys(keys), {}, None)
    assert sink.writes == [[{"type": "subscribed", "id": 1, "versions": dict.fromkeys(keys), "watermark": None}]]
    sink.writes.clear()
    return state, session, sink, conn


def published(n: int, keys: tuple[str, ...] = ("k",)) -> Published:
    return Published(ver(n), keys, (), 0, ver(n))


def test_fanout_fast_reader_gets_every_version_in_order_one_write_per_pass() -> None:
    state, session, sink, _conn = rig()
    state.pump.release([published(1)])
    state.pump.release([published(2), published(3), published(4)])
    assert sink.writes == [[{"type": "invalidate", "keys": {"k": ver(1)}}],
                           [{"type": "invalidate", "keys": {"k": ver(n)}} for n in (2, 3, 4)]]
    assert not session.pending and session.coalesced == 0
    assert state.hub.deliveries == 4


def test_fanout_slow_reader_is_coalesced_until_the_transport_drains() -> None:
    """A paused transport: nothing is written, the Session keeps only the newest version of the key;
    once it drains, that version goes out once, and later versions are written directly again."""
    state, session, sink, _conn = rig()
    sink.open = False
    for n in range(1, 6):
        state.pump.release([published(n)])
    assert sink.writes == []
    assert session.pending == {"k": ver(5)} and session.coalesced == 4
    sink.open = True
    sink.drained()
    assert sink.writes == [[{"type": "invalidate", "keys": {"k": ver(5)}}]]
    assert not session.pending  # never both written and queued
    sink.drained()  # a second drain finds nothing to write
    state.pump.release([published(6)])
    assert sink.writes[1:] == [[{"type": "invalidate", "keys": {"k": ver(6)}}]]


def test_fanout_long_pass_coalesces_per_key() -> None:
    """A pass longer than DELIVER_EACH batches (the gateway is behind): at most DELIVER_EACH invalidates,
    in one write, each key's versions increasing, ending at each key's newest."""
    state, _session, sink, _conn = rig(("k", "j"))
    last = 3 * DELIVER_EACH + 5
    state.pump.release([published(n, ("k",) if n % 2 else ("j",)) for n in range(1, last + 1)])
    (write,) = sink.writes
    assert 1 < len(write) <= DELIVER_EACH
    newest = {"k": ver(last if last % 2 else last - 1), "j": ver(last - 1 if last % 2 else last)}
    for key in ("k", "j"):
        versions = [frame["keys"][key] for frame in write if key in frame["keys"]]
        assert versions == sorted(set(versions)) and versions[-1] == newest[key]


def test_fanout_long_pass_with_writer_tasks_is_one_offer_per_key() -> None:
    """Writer tasks (the default) write nothing inside a pass, so a long pass is not cut into runs: each
    subscribed key is offered once, at its newest version, and the Session holds exactly that."""
    app = create_app(GatewaySettings(jwt_secret=SECRET, redis_url="memory://"), backend=MemoryBackend())
    state: GatewayState = app.state.fw
    session = Session("c1")
    state.hub.register(session)
    state.hub.add(session, session.begin_subscribe(("k", "j")))
    session.finish_subscribe(1, {"k": None, "j": None}, {}, None)
    last = 3 * DELIVER_EACH + 5
    state.pump.release([published(n, ("k",) if n % 2 else ("j",)) for n in range(1, last + 1)])
    assert state.hub.deliveries == 2
    assert session.pending == {"k": ver(last), "j": ver(last - 1)}


def test_fanout_one_invalidate_per_batch_with_every_key_it_touched() -> None:
    state, _session, sink, _conn = rig(("a", "b", "c"))
    state.pump.release([published(7, ("a", "b", "x"))])
    assert sink.writes == [[{"type": "invalidate", "keys": {"a": ver(7), "b": ver(7)}}]]


def test_fanout_lapse_follows_its_invalidate_in_the_same_write() -> None:
    state, _session, sink, _conn = rig()
    state.pump.release([Published(ver(3), ("k",), (), 0, ver(3), lapse="replica_lag")])
    assert sink.writes == [[{"type": "invalidate", "keys": {"k": ver(3)}},
                            {"type": "lapse", "reason": "replica_lag", "keys": ["k"], "version": ver(3)}]]


def test_fanout_replies_are_written_at_once_and_in_order() -> None:
    _state, session, sink, _conn = rig()
    session.control('{"type":"pong","id":1}')
    session.control('{"type":"pong","id":2}')
    assert sink.writes == [[{"type": "pong", "id": 1}], [{"type": "pong", "id": 2}]]


def test_fanout_commit_to_send_is_observed_once_per_frame() -> None:
    state, _session, _sink, _conn = rig()
    now_ms = int(time.time() * 1000)
    state.pump.release([Published(ver(n), ("k",), (), now_ms - 2000, ver(n)) for n in (1, 2, 3)])
    registry = state.metrics.registry
    assert registry.get_sample_value("freshwire_gateway_commit_to_send_seconds_count") == 3
    assert registry.get_sample_value("freshwire_gateway_commit_to_send_seconds_bucket", {"le": "1.0"}) == 0
    assert registry.get_sample_value("freshwire_gateway_commit_to_send_seconds_bucket", {"le": "2.5"}) == 3


async def test_fanout_write_failure_closes_that_connection_with_1011_and_spares_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    state, session, sink, conn = rig()
    other = Session("c2")
    state.hub.register(other)
    state.hub.add(other, other.begin_subscribe(["k"]))
    other.finish_subscribe(None, {"k": None}, {}, None)
    other.take()
    sink.fail = True
    state.pump.release([published(1)])
    assert conn.ending is not None and conn.ending.code == E.CLOSE_INTERNAL
    assert other.pending == {"k": ver(1)}  # the failure did not stop the fan-out
    assert state.metrics.task_failures.labels("writer")._value.get() == 1
    assert conn.ending.sending is not None
    conn.ending.sending.cancel()
    sink.fail = False
    state.pump.release([published(2)])
    assert sink.writes == [] and session.pending == {"k": ver(2)}  # closing: nothing more is written


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_one_final_unmasked_text_frame(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    reader = StreamReader()
    reader.feed_data(text_frame(text))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
        raise AssertionError("the frame is incomplete")
    except StopIteration as done:
        frame: Frame = done.value
    assert frame.opcode is Opcode.TEXT and frame.fin and bytes(frame.data).decode() == text
    assert not reader.buffer


async def test_inbox_delivers_in_order_to_waiting_and_later_receivers() -> None:
    inbox = Inbox()
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    inbox.put_nowait(3)
    assert sorted([await first, await second]) == [1, 2]
    assert not inbox.empty()
    assert await inbox.get() == 3 and inbox.empty()
    waiter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiter.cancel()
    inbox.put_nowait(4)  # the cancelled receiver does not swallow it
    assert await asyncio.wait_for(inbox.get(), 1) == 4


async def test_flag_wait_returns_once_set() -> None:
    flag = Flag(False)
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    assert await asyncio.wait_for(waiter, 1) is True
    flag.clear()
    assert not flag.is_set()
    flag.set()
    assert await flag.wait() is True


async def test_fanout_real_socket_fast_reader_gets_every_version_in_order_through_the_sink() -> None:
    backend = MemoryBackend()
    async with serve(backend, direct_writes=True) as (url, state), \
            connect(f"{url}?token={token()}", subprotocols=[Subprotocol("freshwire.v1")]) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": ["k"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        (session,) = state.hub.sessions
        assert getattr(session.wake, "__func__", None) is Connection._flush  # the direct path is in use
        for n in range(1, 201):
            backend.release(ver(n), ["k"])
            if n % 50 == 0:
                await asyncio.sleep(0)
        seen: list[str] = []
        while not seen or seen[-1] != ver(200):
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["keys"]["k"])
        assert seen == sorted(set(seen))  # in order, each once
        await ws.send(json.dumps({"op": "ping", "id": 2}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "id": 2}


@pytest.mark.parametrize("direct_writes", [False, True], ids=["writer-task", "direct"])
async def test_fanout_a_stalled_reader_costs_a_bounded_backlog_then_coalesces(direct_writes: bool) -> None:
    """A client that stops reading: the kernel takes at most NOTSENT_LOWAT_BYTES unsent for it beyond
    what the client's receive window admits (not the megabytes the send buffer autotunes to), the
    transport pauses soon after, and from then on its changes coalesce in its Session: of 60,000
    versions, one pass each (~3.3 MB of frames), the client's kernel receives well under 1 MB."""
    backend = MemoryBackend()
    async with serve(backend, direct_writes=direct_writes) as (url, state), \
            connect(f"{url}?token={token()}", subprotocols=[Subprotocol("freshwire.v1")], max_queue=16) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": ["k"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        (session,) = state.hub.sessions
        if direct_writes:
            conn = getattr(session.wake, "__self__", None)
            assert isinstance(conn, Connection) and conn.sink is not None
            sock = conn.sink.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT_BYTES
        versions = 60_000
        for n in range(1, versions + 1):  # the client reads nothing meanwhile (max_queue: 16 frames)
            backend.release(ver(n), ["k"])
            await asyncio.sleep(0)  # one fan-out pass per version
        for _ in range(100):  # the last pass
            if session.pending == {"k": ver(versions)}:
                break
            await asyncio.sleep(0.01)
        assert session.pending == {"k": ver(versions)}  # the newest waits for the transport to drain
        assert session.coalesced > versions // 2
        assert received_bytes(ws.transport.get_extra_info("socket")) < 1_000_000
        seen: list[str] = []
        while not seen or seen[-1] != ver(versions):  # reading again: it ends at the newest version
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 5))["keys"]["k"])
        assert seen == sorted(set(seen))


TCP_INFO_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info (linux/tcp.h)


def received_bytes(sock: socket.socket) -> int:
    """Bytes this socket's kernel has received from its peer."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 512)
    return int.from_bytes(info[TCP_INFO_BYTES_RECEIVED:TCP_INFO_BYTES_RECEIVED + 8], "little")

"""The opt-in payload (#14) at the gateway: an `invalidate` carries `data` for the keys whose release
carried it (memory backend over a real WebSocket, and the real release scripts through a real Redis,
one bucket and spread), coalescing keeps the newest, a resync or a resume carries none, the frame
budget holds, and the Python client hands it over as `Batch.data`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import Gateway, recv, token, ver
from test_client_resume import serve

from bench import redis_procs
from cdc.effects import RedisRelease
from cdc.model import Batch
from contract.redis_layout import Published
from gateway.backend import RESYNC, Event
from gateway.backend_memory import MemoryBackend
from gateway.backend_redis import RedisBackend
from gateway.client import Client
from gateway.session import Session

ROW = '{"title":"Ship it","status":"todo"}'


def _release(gw: Gateway, version: str, keys: tuple[str, ...], data: dict[str, str],
             prefixes: tuple[str, ...] = ()) -> None:
    assert gw.client.portal is not None
    gw.client.portal.call(lambda: gw.backend.release(version, keys, prefixes, data=data))


def test_payload_invalidate_carries_data_for_the_keys_that_have_it(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:1", "card:2", "board:1"])
        _release(gw, ver(1), ("card:1", "card:2", "board:1"), {"card:1": ROW, "card:2": "null"})
        msg = recv(ws)
        assert msg == {"type": "invalidate", "keys": {"card:1": ver(1), "card:2": ver(1), "board:1": ver(1)},
                       "data": {"card:1": {"title": "Ship it", "status": "todo"}, "card:2": None}}


def test_payload_only_for_subscribed_keys_and_absent_when_none(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:2"])
        _release(gw, ver(1), ("card:1", "card:2"), {"card:1": ROW})
        assert recv(ws) == {"type": "invalidate", "keys": {"card:2": ver(1)}}  # no `data` field at all


def test_payload_coalescing_keeps_the_newest_and_a_version_without_data_drops_it() -> None:
    s = Session("t")
    s.begin_subscribe(["a", "b"])
    s.finish_subscribe(None, {"a": None, "b": None}, {}, None)
    s.take()
    s.offer("a", ver(1), 0, '{"n":1}')
    s.offer("a", ver(2), 0, '{"n":2}')
    s.offer("b", ver(1), 0, '{"n":1}')
    s.offer("b", ver(2), 0, None)  # a newer version without data: the old data must not go out with it
    s.offer("a", ver(1), 0, '{"n":0}')  # older: refused, keeps the newest
    (frame,) = s.take()
    assert json.loads(frame) == {"type": "invalidate", "keys": {"a": ver(2), "b": ver(2)}, "data": {"a": {"n": 2}}}
    assert s.data == {}


def test_payload_frame_budget_sends_the_rest_without_data() -> None:
    s = Session("t", data_limit=100)
    keys = [f"k{i}" for i in range(5)]
    s.begin_subscribe(keys)
    s.finish_subscribe(None, dict.fromkeys(keys), {}, None)
    s.take()
    for k in keys:
        s.offer(k, ver(1), 0, json.dumps({"v": "x" * 30}))
    (frame,) = s.take()
    body = json.loads(frame)
    assert set(body["keys"]) == set(keys)
    assert 1 <= len(body["data"]) < len(keys)  # within the budget; the others are refetched


def test_payload_resync_carries_no_data(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:1"])
        gw.backend.versions["card:1"] = ver(5)  # changed while the stream was broken
        gw.resync()
        msg = recv(ws)
        assert msg == {"type": "invalidate", "keys": {"card:1": ver(5)}}
        assert recv(ws)["type"] == "lapse"


def test_payload_resume_invalidate_carries_no_data(gw: Gateway) -> None:
    _release(gw, ver(3), ("card:1",), {"card:1": ROW})
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:1"], since={"card:1": ver(1)})
        assert recv(ws) == {"type": "invalidate", "keys": {"card:1": ver(3)}}


def test_payload_prefix_release_carries_no_data(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["card:1"])
        _release(gw, ver(1), ("card:1",), {"card:1": ROW})
        assert "data" in recv(ws)
        _release(gw, ver(2), (), {}, prefixes=("card:",))
        assert recv(ws) == {"type": "invalidate", "keys": {"card:1": ver(2)}}


def test_payload_python_client_exposes_batch_data() -> None:
    async def run() -> None:
        backend = MemoryBackend()
        async with serve(backend) as (url, _state), Client(url, token=token()) as client:
            await client.subscribe(["card:1", "card:2"])
            backend.release(ver(1), ("card:1", "card:2"), data={"card:1": ROW})
            batch = await client.next_batch(5)
            assert batch == {"card:1": ver(1), "card:2": ver(1)}
            assert batch.data == {"card:1": {"title": "Ship it", "status": "todo"}}

    asyncio.run(run())


# -- the real release scripts and the real Redis backend


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    with redis_procs.standalone(tmp_path) as url:
        yield url


@pytest.mark.parametrize("buckets", [1, 4])
def test_payload_travels_with_its_key_through_redis(standalone: str, buckets: int) -> None:
    release = RedisRelease(standalone, buckets=buckets)
    backend = RedisBackend(standalone)
    keys = tuple(f"card:{i}" for i in range(8))
    data = {k: f'{{"i":{i},"t":"Jos\u00e9 /x"}}' for i, k in enumerate(keys) if i != 3}
    data["card:5"] = "null"

    async def run() -> list[Event]:
        release.release([Batch(version=ver(1), tx_id="", commit_ts_ms=0, keys=("card:0",))])
        await backend.start()
        seen: list[Event] = []

        async def collect() -> None:
            async for event in backend.events():
                seen.append(event)
                if event is RESYNC:
                    ready.set()
                if isinstance(event, Published) and event.version >= ver(3):
                    return

        ready = asyncio.Event()
        task = asyncio.create_task(collect())
        await asyncio.wait_for(ready.wait(), 15)
        release.release([Batch(version=ver(2), tx_id="2", commit_ts_ms=1, keys=keys, data=data)])
        # A replay at the same version advances nothing, so it announces no data either.
        release.release([Batch(version=ver(2), tx_id="2", commit_ts_ms=1, keys=keys, data=data)])
        release.release([Batch(version=ver(3), tx_id="3", commit_ts_ms=2, keys=("card:1",))])
        await asyncio.wait_for(task, 15)
        await backend.stop()
        return seen

    events = [e for e in asyncio.run(run()) if isinstance(e, Published)]
    by_version = {e.version: e for e in events}
    assert sorted(by_version[ver(2)].keys) == sorted(keys)
    assert by_version[ver(2)].data == data  # card:0 advanced from ver(1): its data too
    assert by_version[ver(3)].data == {}
    assert [e.version for e in events].count(ver(2)) == 1

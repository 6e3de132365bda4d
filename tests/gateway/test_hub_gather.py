"""Gathered fan-out (Hub.deliver_many) leaves every session as one-by-one delivery would, and the
writer's Wake behaves as a single-waiter Event."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st

from contract.redis_layout import Published
from gateway.hub import Hub
from gateway.session import Session
from gateway.ws import Wake

KEYS = ["a", "b", "t:1", "t:2"]
PREFIXES = ["t:", "x:"]

batches = st.lists(st.tuples(st.lists(st.sampled_from(KEYS), max_size=3, unique=True),
                             st.lists(st.sampled_from(PREFIXES), max_size=1, unique=True),
                             st.integers(0, 5)), min_size=1, max_size=8)


def _hub(subscriptions: list[list[str]]) -> tuple[Hub, list[Session]]:
    hub = Hub()
    sessions = []
    for i, keys in enumerate(subscriptions):
        session = Session(f"c{i}")
        hub.register(session)
        hub.add(session, session.begin_subscribe(keys))
        session.finish_subscribe(None, dict.fromkeys(keys), {}, None)
        session.take()
        sessions.append(session)
    return hub, sessions


def _events(spec: list[tuple[list[str], list[str], int]]) -> list[Published]:
    return [Published(f"{i + 1:016x}", tuple(keys), tuple(prefixes), 1000 + ts, f"{i + 1:016x}")
            for i, (keys, prefixes, ts) in enumerate(spec)]


@given(batches, st.lists(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True), min_size=1,
                         max_size=4))
def test_hub_deliver_many_same_sessions_as_one_by_one(spec: list[tuple[list[str], list[str], int]],
                                                      subscriptions: list[list[str]]) -> None:
    one_hub, one = _hub(subscriptions)
    many_hub, many = _hub(subscriptions)
    events = _events(spec)
    for event in events:
        one_hub.deliver(event)
    many_hub.deliver_many(events)
    for a, b in zip(one, many, strict=True):
        assert a.known == b.known
        assert a.pending == b.pending
        assert [json.loads(f) for f in a.take()] == [json.loads(f) for f in b.take()]  # key order may differ


def test_hub_deliver_many_keeps_the_oldest_commit_time_of_a_key() -> None:
    hub, (session,) = _hub([["a"]])
    hub.deliver_many([Published("0000000000000001", ("a",), (), 111, "0000000000000001"),
                      Published("0000000000000002", ("a",), (), 222, "0000000000000002")])
    assert session.pending == {"a": "0000000000000002"}
    assert session.oldest_commit_ms == 111


async def test_wake_set_before_wait_returns_at_once_and_clears() -> None:
    wake = Wake()
    wake.set()
    await asyncio.wait_for(wake.wait(), 1)
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # wait() cleared it
    wake.set()
    wake.set()  # a second set before the waiter runs wakes it once
    await asyncio.wait_for(waiter, 1)


async def test_wake_cancelled_waiter_leaves_it_usable() -> None:
    wake = Wake()
    waiter = asyncio.create_task(wake.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    wake.set()
    await asyncio.wait_for(wake.wait(), 1)

"""The Python client against a real uvicorn gateway (memory backend): `lapse` messages reach
`on_lapse` and `lapses` after the invalidate they concern, a failing callback breaks nothing, and
`lag_s()` measures how long the oldest batch has waited for the application (issue #11)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from gw_support import token, ver
from test_client_resume import serve

from gateway.backend_memory import MemoryBackend
from gateway.client import LAPSES_KEPT, Client

WAIT_S = 5.0


@dataclass
class Rig:
    client: Client
    backend: MemoryBackend
    seen: list[tuple[dict[str, Any], dict[str, str | None]]] = field(default_factory=list)


async def until(cond: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def reach(size: Callable[[], int], n: int, what: str) -> None:
    await until(lambda: size() >= n, f"{n} {what}")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    backend = MemoryBackend()
    async with serve(backend) as (url, _state):
        seen: list[tuple[dict[str, Any], dict[str, str | None]]] = []
        # Each call records the message and what the client had received by then.
        client = Client(url, token=token(), on_lapse=lambda m: seen.append((m, dict(client.versions))))
        async with client:
            await client.subscribe(["a", "b"])
            yield Rig(client, backend, seen)


async def test_client_lapse_reaches_on_lapse_after_its_invalidate(rig: Rig) -> None:
    c = rig.client
    rig.backend.release(ver(7), ["a", "x"], lapse="replica_lag")
    await until(lambda: rig.seen, "on_lapse")
    message, versions_then = rig.seen[0]
    assert message == {"type": "lapse", "reason": "replica_lag", "keys": ["a"], "version": ver(7)}
    assert versions_then["a"] == ver(7), "the invalidate came first"
    assert list(c.lapses) == [message]
    assert await c.next_batch(WAIT_S) == {"a": ver(7)}, "the batch it concerns was queued before it"


async def test_client_lapse_resync_names_every_key_of_the_connection(rig: Rig) -> None:
    rig.backend.release(ver(3), ["b"])
    assert await rig.client.next_batch(WAIT_S) == {"b": ver(3)}
    rig.backend.resync()
    await until(lambda: rig.client.lapses, "the resync lapse")
    assert rig.client.lapses[-1] == {"type": "lapse", "reason": "resync", "keys": ["a", "b"], "version": ver(3)}


async def test_client_lapse_callback_that_raises_is_logged_and_the_client_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()

    def boom(_message: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    async with serve(backend) as (url, _state), Client(url, token=token(), on_lapse=boom) as c:
        await c.subscribe(["a"])
        with caplog.at_level(logging.ERROR, logger="gateway.client"):
            for n, reason in enumerate(["flush", "replica_lag"], start=1):
                backend.release(ver(n), ["a"], lapse=reason)
                assert await c.next_batch(WAIT_S) == {"a": ver(n)}
                await reach(lambda: len(c.lapses), n, "lapses")
        assert [m["reason"] for m in c.lapses] == ["flush", "replica_lag"]
        assert sum("on_lapse failed" in r.getMessage() for r in caplog.records) == 2
        assert c.state == "open" and c.connects == 1, "the callback's failure did not drop the connection"
        await c.ping()


async def test_client_lapses_keeps_the_most_recent(rig: Rig) -> None:
    n = LAPSES_KEPT + 5
    for i in range(1, n + 1):  # one at a time: the gateway queues at most control_queue (64) unread
        rig.backend.release(ver(i), ["a"], lapse="replica_lag")
        await reach(lambda: len(rig.seen), i, "lapses")
    lapses = list(rig.client.lapses)
    assert len(lapses) == LAPSES_KEPT
    assert [m["version"] for m in lapses] == [ver(i) for i in range(6, n + 1)], "oldest dropped, newest last"


async def test_client_lag_is_the_age_of_the_oldest_batch_not_taken(rig: Rig) -> None:
    c = rig.client
    assert c.lag_s() == 0.0
    rig.backend.release(ver(1), ["a"])
    await until(lambda: c.versions["a"] == ver(1), "the first batch")
    await asyncio.sleep(0.3)
    rig.backend.release(ver(2), ["b"])
    await until(lambda: c.versions["b"] == ver(2), "the second batch")
    assert c.lag_s() >= 0.3, "the first batch has waited that long"
    assert await c.next_batch(WAIT_S) == {"a": ver(1)}
    assert c.lag_s() < 0.3, "now the second, younger batch is the oldest"
    async for batch in c:
        assert batch == {"b": ver(2)}
        break
    assert c.lag_s() == 0.0, "nothing waits"

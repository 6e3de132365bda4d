"""The Python client against a real uvicorn gateway (memory backend), issue #11 item 1: bursts of
subscribe() calls, at once or spread over time, all end up live on the gateway or are reported to
their caller as refused; the client stays under the rate limit and is never closed for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from gw_support import token, ver
from test_client_resume import serve

from gateway.backend_memory import MemoryBackend
from gateway.client import Client, ClientError, State
from gateway.state import GatewayState

TEST_TIMEOUT_S = 40.0
SETTLE_S = 10.0


@dataclass
class Rig:
    client: Client
    state: GatewayState
    backend: MemoryBackend
    states: list[State] = field(default_factory=list)

    def held(self) -> set[str]:
        """The keys the gateway holds for the client (one connection, or none while it reconnects)."""
        sessions = list(self.state.hub.sessions)
        assert len(sessions) <= 1
        return set(sessions[0].known) if sessions else set()

    def sample(self, name: str, code: str) -> float:
        return self.state.metrics.registry.get_sample_value(name, {"code": code}) or 0.0

    async def assert_all_live(self, keys: list[str]) -> None:
        """Every key live on the gateway, no `rate_limited`, no close, no reconnect."""
        for _ in range(int(SETTLE_S / 0.01)):
            if self.held() >= set(keys):
                break
            await asyncio.sleep(0.01)
        report = (f"rate_limited sent: {self.sample('freshwire_gateway_errors_total', 'rate_limited'):g}, "
                  f"4008 closes: {self.sample('freshwire_gateway_closes_total', '4008'):g}, states: {self.states}")
        assert self.held() == set(keys), f"the gateway holds {len(self.held())} of {len(keys)} keys; {report}"
        assert self.sample("freshwire_gateway_errors_total", "rate_limited") == 0, report
        assert self.sample("freshwire_gateway_closes_total", "4008") == 0, report
        assert self.states == ["open"], report
        assert set(self.client.versions) == set(keys)

    async def deliver_each(self, keys: list[str], version: str, also: Sequence[str] = ()) -> None:
        """Release `version` for every key (and for `also`); each key must reach the client."""
        self.backend.release(version, [*keys, *also])
        missing = set(keys)
        while missing:
            batch = await self.client.next_batch(SETTLE_S)
            missing -= {k for k, v in batch.items() if v == version}


@contextlib.asynccontextmanager
async def open_rig(patterns: Sequence[str] = ("*",), **settings: Any) -> AsyncIterator[Rig]:
    """A gateway with `settings`, and an open client whose token covers `patterns`; bounded in time."""
    backend = MemoryBackend()
    async with asyncio.timeout(TEST_TIMEOUT_S), serve(backend, **settings) as (url, state):
        states: list[State] = []
        async with Client(url, token=token(patterns), on_state=states.append, record=True) as client:
            yield Rig(client, state, backend, states)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with open_rig() as r:
        yield r


async def subscribe_each(c: Client, keys: list[str], gap_s: float = 0.0) -> list[object]:
    """One subscribe() call per key, all at once (gap 0) or `gap_s` apart; every outcome."""
    calls = []
    for key in keys:
        calls.append(asyncio.ensure_future(c.subscribe([key])))
        if gap_s:
            await asyncio.sleep(gap_s)
    return list(await asyncio.gather(*calls, return_exceptions=True))


def failures(results: list[object]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


async def test_client_burst_of_1000_subscribes_all_live(rig: Rig) -> None:
    keys = [f"burst:{i}" for i in range(1000)]
    results = await subscribe_each(rig.client, keys)
    assert not failures(results), f"{len(failures(results))} calls failed, e.g. {failures(results)[:2]!r}"
    assert results[0] == {"burst:0": None}
    await rig.assert_all_live(keys)
    await rig.deliver_each(keys, ver(7))


async def test_client_subscribes_spread_over_time_all_live(rig: Rig) -> None:
    """300 calls 5 ms apart."""
    keys = [f"spread:{i}" for i in range(300)]
    results = await subscribe_each(rig.client, keys, gap_s=0.005)
    assert not failures(results), f"{len(failures(results))} calls failed, e.g. {failures(results)[:2]!r}"
    await rig.assert_all_live(keys)
    await rig.deliver_each(keys, ver(9))


async def test_client_burst_of_unsubscribes_and_subscribes_ends_exact(rig: Rig) -> None:
    c = rig.client
    keys = [f"churn:{i}" for i in range(1000)]
    assert not failures(await subscribe_each(c, keys))
    more = [f"churn:new:{i}" for i in range(400)]
    outcomes = await asyncio.gather(*(c.unsubscribe([k]) for k in keys[:600]),
                                    *(c.subscribe([k]) for k in more),
                                    c.subscribe(["churn:flip"]), c.unsubscribe(["churn:flip"]),
                                    return_exceptions=True)
    assert not failures(list(outcomes))
    want = keys[600:] + more
    await rig.assert_all_live(want)
    await rig.deliver_each(want, ver(11), also=keys[:600])
    assert not {k for k, _v in rig.client.received} & set(keys[:600]), "an unsubscribed key was delivered"


async def test_client_refused_keys_are_reported_not_kept() -> None:
    """Keys the token does not cover (`forbidden`) and keys past max_subscriptions (`too_many_keys`,
    first asked first served) fail their own calls only; the client keeps none of them."""
    async with open_rig(patterns=["ok:*"]) as rig:
        await refused_keys_are_reported_not_kept(rig)


async def refused_keys_are_reported_not_kept(rig: Rig) -> None:
    with pytest.raises(ClientError, match="forbidden"):   # a call with only refused keys, as before
        await rig.client.subscribe(["no:x", "no:y"])
    ok = [f"ok:{i}" for i in range(1100)]
    no = [f"no:{i}" for i in range(50)]
    results = await subscribe_each(rig.client, [*no, *ok])
    codes = [r.code if isinstance(r, ClientError) else "ok" if isinstance(r, dict) else repr(r) for r in results]
    assert codes[:50] == ["forbidden"] * 50
    assert codes[50:1050] == ["ok"] * 1000
    assert codes[1050:] == ["too_many_keys"] * 100
    first = results[0]
    assert isinstance(first, ClientError) and first.keys == ["no:0"]
    assert set(rig.client.versions) == set(ok[:1000])
    assert rig.held() == set(ok[:1000])
    await rig.deliver_each(ok[:1000], ver(13))


async def test_client_frames_dropped_by_a_stricter_gateway_are_resent() -> None:
    """A gateway limited to 5 frames/s drops frames with `rate_limited`: the client re-sends what they
    carried, backs off, and is never closed for it."""
    async with open_rig(max_messages_per_s=5.0) as rig:
        await dropped_frames_are_resent(rig)


async def dropped_frames_are_resent(rig: Rig) -> None:
    keys = [f"strict:{i}" for i in range(300)]
    results = await subscribe_each(rig.client, keys, gap_s=0.005)
    assert not failures(results), f"{len(failures(results))} calls failed, e.g. {failures(results)[:2]!r}"
    assert rig.held() == set(keys)
    assert rig.sample("freshwire_gateway_errors_total", "rate_limited") > 0, "the gateway did drop frames"
    assert rig.sample("freshwire_gateway_closes_total", "4008") == 0
    assert rig.states == ["open"]
    await rig.deliver_each(keys, ver(15))

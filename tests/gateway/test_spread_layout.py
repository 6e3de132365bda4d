"""The version store spread over buckets (#12, contract/redis_buckets.py), with the real scripts, the
real RedisRelease and the real RedisBackend: on one standalone Redis (the same code the single-node
stack would run with FRESHWIRE_REDIS_BUCKETS > 1) and on a real Redis Cluster of 3 masters and 3
replicas, including a master SIGKILLed under releases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from gw_support import ver

from bench import redis_procs
from cdc.effects import EffectError, RedisRelease
from cdc.model import Batch
from contract.redis_buckets import LAYOUT, Layout
from contract.redis_layout import Published
from gateway.backend import RESYNC, BackendUnavailable, Event
from gateway.backend_redis import RedisBackend

BUCKETS = 6


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    with redis_procs.standalone(tmp_path) as url:
        yield url


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_procs.Cluster]:
    with redis_procs.cluster(tmp_path_factory.mktemp("cluster")) as found:
        yield found


async def _collect(backend: RedisBackend, until: str, subscribed: asyncio.Event,
                   timeout_s: float = 15.0) -> list[Event]:
    """Events until a release at `until` (or later) arrived; `subscribed` is set at the first RESYNC."""
    seen: list[Event] = []

    async def run() -> None:
        async for event in backend.events():
            seen.append(event)
            if event is RESYNC:
                subscribed.set()
            if isinstance(event, Published) and event.version >= until:
                return

    await asyncio.wait_for(run(), timeout_s)
    return seen


def _releases(n: int, width: int) -> list[Batch]:
    return [Batch(version=ver(i), tx_id=str(i), commit_ts_ms=i, keys=tuple(f"t:{i}:k{j}" for j in range(width)))
            for i in range(1, n + 1)]


def _check_joined(events: list[Event], batches: list[Batch]) -> None:
    published = [e for e in events if isinstance(e, Published)]
    assert [p.version for p in published] == [b.version for b in batches]  # once each, in order
    for p, b in zip(published, batches, strict=True):
        assert sorted(p.keys) == sorted(b.keys), "one release, all of its keys, in one event"
        assert p.tx_id == b.tx_id


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_a_spread_release_reaches_a_gateway_as_one_event_with_every_key(
        where: str, standalone: str, redis_cluster: redis_procs.Cluster) -> None:
    url = standalone if where == "standalone" else redis_cluster.url
    if where == "cluster":
        for port in redis_cluster.masters():
            redis.Redis(port=port).flushall()
    release = RedisRelease(url, buckets=BUCKETS)
    backend = RedisBackend(url)
    batches = _releases(30, 9)

    async def run() -> list[Event]:
        release.release([Batch(version=ver(0), tx_id="", commit_ts_ms=0, keys=("warm",))])
        await backend.start()
        subscribed = asyncio.Event()
        task = asyncio.create_task(_collect(backend, batches[-1].version, subscribed))
        await asyncio.wait_for(subscribed.wait(), 15)
        for b in batches:
            release.release([b])
        events = await task
        versions = await backend.read_versions(["t:7:k3", "t:30:k8", "never"])
        assert versions == {"t:7:k3": ver(7), "t:30:k8": ver(30), "never": None}
        assert await backend.watermark() == ver(30)
        assert await backend.tx_version("12") == ver(12)
        await backend.stop()
        return events

    events = asyncio.run(run())
    assert events[0] is RESYNC
    _check_joined(events, batches)


def test_a_consumer_with_another_bucket_count_is_refused_by_name(standalone: str) -> None:
    RedisRelease(standalone, buckets=4).release(_releases(1, 1))
    assert redis.Redis.from_url(standalone).get(LAYOUT) == b"buckets=4"
    refused = RedisRelease(standalone, buckets=8).refusal()
    assert refused is not None and "FRESHWIRE_REDIS_BUCKETS=8" in refused
    with pytest.raises(EffectError, match="4 bucket"):
        RedisRelease(standalone, buckets=8).release(_releases(2, 1))


def test_a_version_store_of_one_bucket_is_not_reread_as_spread(standalone: str) -> None:
    RedisRelease(standalone).release(_releases(1, 1))
    refused = RedisRelease(standalone, buckets=4).refusal()
    assert refused is not None and "1 bucket" in refused


def test_the_buckets_land_evenly_on_the_masters(redis_cluster: redis_procs.Cluster) -> None:
    client = redis.Redis(port=redis_cluster.masters()[0])
    owners = {}
    for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):  # type: ignore[no-untyped-call]
        owners[(int(start), int(end))] = int(master[1])
    layout = Layout(BUCKETS)
    counts: dict[int, int] = {}
    for b in range(BUCKETS):
        slot = int(client.execute_command("CLUSTER KEYSLOT", layout.versions(b)))  # type: ignore[no-untyped-call]
        port = next(p for (lo, hi), p in owners.items() if lo <= slot <= hi)
        counts[port] = counts.get(port, 0) + 1
    assert sorted(counts.values()) == [BUCKETS // 3] * 3


def test_a_master_killed_under_releases_loses_nothing_a_gateway_is_told(redis_cluster: redis_procs.Cluster) -> None:
    """SIGKILL one master while releases go on: the consumer's releases retry until its replica is
    promoted, the gateway resyncs, and every key ends at its last version; afterwards live events flow
    again. The recovery time (kill -> first live event after the gateway's resync) is printed."""
    for port in redis_cluster.masters():
        redis.Redis(port=port).flushall()
    url = redis_cluster.url
    planned = _releases(400, 4)
    backend = RedisBackend(url)

    async def run() -> tuple[list[Event], list[Batch], float]:
        release = RedisRelease(url, buckets=BUCKETS)
        release.release([Batch(version=ver(0), tx_id="", commit_ts_ms=0, keys=("warm",))])
        await backend.start()
        subscribed = asyncio.Event()
        events: list[Event] = []
        live_again = asyncio.Event()

        async def watch() -> None:
            resynced_after_kill = False
            async for event in backend.events():
                events.append(event)
                if event is RESYNC:
                    subscribed.set()
                    resynced_after_kill = killed_at > 0
                elif resynced_after_kill:
                    live_again.set()

        killed_at = 0.0
        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(subscribed.wait(), 15)
        victim = redis_cluster.masters()[1]
        released: list[Batch] = []
        for i, b in enumerate(planned):  # until live events flow again after the failover (bounded: 400)
            if i == 20:
                redis_cluster.kill(victim)
                killed_at = time.monotonic()
            if live_again.is_set() and i > 30:
                break
            deadline = time.monotonic() + 30
            while True:  # as the consumer does: retry the (idempotent) release until it is acknowledged
                try:
                    await asyncio.to_thread(release.release, [b])
                    break
                except EffectError:
                    assert time.monotonic() < deadline, "releases did not resume after the failover"
                    await asyncio.sleep(0.1)
            released.append(b)
            await asyncio.sleep(0.05)
        recovered = time.monotonic() - killed_at
        assert live_again.is_set(), "no live event after the failover"
        await asyncio.sleep(0.5)
        watcher.cancel()
        versions = await backend.read_versions([k for b in released for k in b.keys])
        assert all(versions[k] == b.version for b in released for k in b.keys)
        await backend.stop()
        redis_cluster.restart(victim)
        return events, released, recovered

    events, released, recovered = asyncio.run(run())
    print(f"redis master SIGKILL: live events back {recovered:.1f} s after the kill")
    assert RESYNC in events[1:], "the gateway resynced after the failover"
    live = [e for e in events if isinstance(e, Published)]
    assert len({e.version for e in live}) == len(live), "no release twice"
    assert [e.version for e in live] == sorted(e.version for e in live), "in release order"
    assert live[-1].version == released[-1].version


def test_wait_acknowledges_a_release_only_once_each_written_master_has_a_replica_holding_it(
        standalone: str, redis_cluster: redis_procs.Cluster) -> None:
    """WAIT runs on the connection that wrote, once per master written: on the cluster (one replica per
    master) `wait_replicas=1` passes and 2 cannot; a standalone Redis has no replica, so 1 cannot."""
    redis_cluster.wait_ready(60)  # after the failover test: the old master is back as a replica, synced
    for port in redis_cluster.masters():
        redis.Redis(port=port).flushall()
    RedisRelease(redis_cluster.url, buckets=BUCKETS, wait_replicas=1, wait_timeout_ms=2000).release(_releases(5, 8))
    with pytest.raises(EffectError, match="WAIT 2 got 1"):
        RedisRelease(redis_cluster.url, buckets=BUCKETS, wait_replicas=2, wait_timeout_ms=100).release(_releases(6, 8))
    with pytest.raises(EffectError, match="WAIT 1 got 0"):
        RedisRelease(standalone, wait_replicas=1, wait_timeout_ms=100).release(_releases(1, 1))


def test_a_gateway_on_a_cluster_reads_no_version_before_it_knows_the_layout(
        redis_cluster: redis_procs.Cluster) -> None:
    """Until the consumer has written {fw}:layout, a version read would look in the wrong buckets and
    answer "never changed": it is refused as unavailable instead, and works once the layout is there."""
    redis_cluster.wait_ready(60)
    for port in redis_cluster.masters():
        redis.Redis(port=port).flushall()
    backend = RedisBackend(redis_cluster.url)

    async def run() -> dict[str, str | None]:
        await backend.start()
        with pytest.raises(BackendUnavailable, match="layout"):
            await backend.read_versions(["t:1:k0"])
        await asyncio.to_thread(RedisRelease(redis_cluster.url, buckets=BUCKETS).release, _releases(1, 2))
        found = await backend.read_versions(["t:1:k0"])
        await backend.stop()
        return found

    assert asyncio.run(run()) == {"t:1:k0": ver(1)}

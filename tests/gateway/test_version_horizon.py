"""A bounded version store (#12): versions of keys not changed within the retention horizon are
dropped, and a key without a version of its own reports the horizon instead of nothing, so a resume
never misses a change (at worst one extra refetch). Against a real Redis of the test's own (the real
release and trim scripts, the real RedisBackend) and, as a property, against the memory backend."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from gw_support import ver
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.effects import RedisRelease
from cdc.model import Batch
from contract.redis_layout import CHANGED, VERSIONS
from gateway.backend_memory import MemoryBackend
from gateway.backend_redis import RedisBackend

KEYS = [f"k{i}" for i in range(12)]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _never_missed(latest: dict[str, str], since: dict[str, str | None], told: dict[str, str | None]) -> None:
    for key, version in latest.items():
        before = since.get(key)
        if before is None or version > before:
            now = told[key]
            assert now is not None and now > (before or ""), (key, version, before, now)


def test_version_horizon_with_the_real_scripts_never_misses_a_change(own_redis: str) -> None:
    rng = random.Random(7)
    release = RedisRelease(own_redis, track_changes=True)
    backend = RedisBackend(own_redis)
    latest: dict[str, str] = {}
    snapshots: list[dict[str, str | None]] = []

    async def run() -> None:
        await backend.start()
        try:
            n = 0
            for step in range(400):
                roll = rng.random()
                if roll < 0.6:
                    n += 1
                    keys = tuple(rng.sample(KEYS, rng.randint(1, 3)))
                    release.release([Batch(version=ver(n), tx_id=str(n), commit_ts_ms=step, keys=keys)])
                    latest.update(dict.fromkeys(keys, ver(n)))
                elif roll < 0.8:
                    snapshots.append(await backend.read_versions(KEYS))
                else:
                    release.trim(cutoff_ms=step - rng.randint(0, 60), max_keys=rng.choice([0, 4]))
            for since in snapshots:
                _never_missed(latest, since, await backend.read_versions(KEYS))
        finally:
            await backend.stop()

    asyncio.run(run())
    r = redis.Redis.from_url(own_redis)
    release.trim(cutoff_ms=10**9, max_keys=0)  # everything past the horizon: memory goes, nothing is missed
    assert r.hlen(VERSIONS) == 0 and r.zcard(CHANGED) == 0
    told = asyncio.run(_read(own_redis))
    assert all(v == max(latest.values()) for v in told.values())  # at worst one extra refetch per key
    release.close()


async def _read(url: str) -> dict[str, str | None]:
    backend = RedisBackend(url)
    await backend.start()
    try:
        return await backend.read_versions(KEYS)
    finally:
        await backend.stop()


OPS = st.lists(st.one_of(
    st.tuples(st.just("release"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("trim"), st.lists(st.sampled_from(KEYS), max_size=6)),
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_version_horizon_resume_never_misses_a_change_across_a_trim(ops: list[tuple[object, ...]]) -> None:
    """Property: whatever was trimmed and when, a client resuming from any earlier snapshot is told a
    newer version of every key that changed after it."""
    backend = MemoryBackend()
    latest: dict[str, str] = {}
    snapshots: list[dict[str, str | None]] = []

    async def run() -> None:
        n = 0
        for op in ops:
            if op[0] == "release":
                n += 1
                keys = list(op[1])  # type: ignore[call-overload]
                backend.release(ver(n), keys)
                latest.update(dict.fromkeys(keys, ver(n)))
            elif op[0] == "snapshot":
                snapshots.append(await backend.read_versions(KEYS))
            else:
                backend.trim(list(op[1]))  # type: ignore[call-overload]
        for since in snapshots:
            _never_missed(latest, since, await backend.read_versions(KEYS))

    asyncio.run(run())

"""Backend contract, parametrized over the memory backend and the Redis backend (real Redis, in the
layout the release script writes). The memory case needs nothing; the Redis case uses the real stack
(marked `stack`, so `make test-unit` runs the memory case alone)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import redis

from connectors.stack_settings import StackSettings
from contract.redis_layout import PREFIXES, VERSIONS, tx_key
from gateway.backend import Backend
from gateway.backend_memory import MemoryBackend
from gateway.backend_redis import POOL_SIZE, RedisBackend

BIG = "7fff000000000000"  # above any real version, on keys no one else uses

# release(version, keys, prefixes, tx_id): makes a transaction visible to the backend under test
Release = Callable[[str, tuple[str, ...], tuple[str, ...], str], object]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.stack)])
def backend_and_release(request: pytest.FixtureRequest) -> tuple[Backend, Release]:
    if request.param == "memory":
        memory = MemoryBackend()
        return memory, lambda v, keys, prefixes, tx: memory.release(v, keys, prefixes, 0, tx)
    stack_settings: StackSettings = request.getfixturevalue("stack_settings")
    r = redis.Redis.from_url(stack_settings.redis_url)

    def release(v: str, keys: tuple[str, ...], prefixes: tuple[str, ...], tx: str) -> None:
        # Written straight to the hashes (not through the watermark): the real pipeline keeps running.
        for k in keys:
            r.hset(VERSIONS, k, v)
        for p in prefixes:
            r.hset(PREFIXES, p, v)
        if tx:
            r.set(tx_key(tx), v, ex=60)

    return RedisBackend(stack_settings.redis_url), release


async def test_backend_versions_prefixes_and_tx_markers(backend_and_release: tuple[Backend, Release]) -> None:
    backend, release = backend_and_release
    b: Backend = backend
    await b.start()
    try:
        ns = f"bt{uuid.uuid4().hex[:8]}"
        release(BIG[:-1] + "1", (f"{ns}:a",), (), "")
        release(BIG[:-1] + "2", (), (f"{ns}:p:",), f"{ns}-tx")
        got = await b.read_versions([f"{ns}:a", f"{ns}:p:1", f"{ns}:none"])
        assert got[f"{ns}:a"] == BIG[:-1] + "1" and got[f"{ns}:p:1"] == BIG[:-1] + "2"
        # never touched: no version, or that of a flush of every key (prefix "") from an earlier test
        none = got[f"{ns}:none"]
        assert none is None or none < BIG
        assert await b.tx_version(f"{ns}-tx") == BIG[:-1] + "2"
        assert await b.tx_version(f"{ns}-unknown") is None
    finally:
        await b.stop()


async def test_backend_bursts_wait_for_a_connection_instead_of_failing(
        backend_and_release: tuple[Backend, Release]) -> None:
    backend, _release = backend_and_release
    b: Backend = backend
    await b.start()
    try:
        results = await asyncio.gather(*[b.tx_version(str(i)) for i in range(POOL_SIZE * 20)],
                                       return_exceptions=True)
        assert not [r for r in results if isinstance(r, Exception)]
    finally:
        await b.stop()

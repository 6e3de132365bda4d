"""The Redis backend: versions from the hashes the cdc consumer writes, batches from its channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contract.redis_layout import CHANNEL, HORIZON, PREFIXES, VERSIONS, WATERMARK, PrefixSet, decode_published, tx_key
from gateway.backend import RESYNC, BackendUnavailable, Event

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0
POOL_SIZE = 64
POOL_WAIT_S = 5.0


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisBackend:
    def __init__(self, url: str) -> None:
        self._url = url
        # A blocking pool: a burst of requests (subscribes, awaits) waits for one of POOL_SIZE
        # connections instead of failing with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S,
                                                        socket_timeout=5, socket_connect_timeout=2,
                                                        health_check_interval=10)
        self._redis = aioredis.Redis(connection_pool=pool)
        self.healthy = False

    async def start(self) -> None:
        try:
            await self._redis.ping()
            self.healthy = True
        except (RedisError, OSError) as exc:
            log.warning("redis not reachable yet: %s", exc)

    async def stop(self) -> None:
        self.healthy = False
        await self._redis.aclose()

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        if not keys:
            return {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(VERSIONS, list(keys))
                pipe.hgetall(PREFIXES)
                pipe.get(HORIZON)
                own, prefixes, horizon = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(str(exc)) from exc
        released = PrefixSet({_text(p) or "": _text(v) or "" for p, v in prefixes.items()})
        floor = _text(horizon)
        return {k: released.version_of(_text(v), k, floor) for k, v in zip(keys, own, strict=True)}

    async def watermark(self) -> str | None:
        try:
            return _text(await self._redis.get(WATERMARK))
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def tx_version(self, tx_id: str) -> str | None:
        try:
            return _text(await self._redis.get(tx_key(tx_id)))
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def events(self) -> AsyncIterator[Event]:
        delay = RECONNECT_MIN_S
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self.healthy = True
                delay = RECONNECT_MIN_S
                yield RESYNC  # anything released while we were not subscribed is recovered from versions
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        yield decode_published(msg["data"])
                    except (ValueError, KeyError) as exc:
                        log.error("undecodable message on %s: %s", CHANNEL, exc)
            except (RedisError, OSError) as exc:
                self.healthy = False
                log.warning("redis subscription lost (%s); reconnecting in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

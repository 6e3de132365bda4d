"""The Redis backend: versions from the hashes the cdc consumer writes, batches from its channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from contract.redis_buckets import LAYOUT, Joiner, Layout, LayoutError, cluster_nodes, parse_layout_value
from contract.redis_layout import CHANNEL, HORIZON, PREFIXES, VERSIONS, WATERMARK, PrefixSet, decode_published, tx_key
from gateway.backend import RESYNC, BackendUnavailable, Event
from gateway.shard_readers import ShardBreak, channels_by_node, spread_stream

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0
SPREAD_RECONNECT_MAX_S = 0.5  # a failover takes seconds: look for the promoted replica often
SETUP_TIMEOUT_S = 5.0
POOL_SIZE = 64
POOL_WAIT_S = 5.0


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class RedisBackend:
    """A standalone Redis (redis://) or a Redis Cluster (redis+cluster://host:port,...). The layout, one
    bucket or several (contract/redis_buckets.py), is read from the store, where the consumer wrote it."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._seeds = cluster_nodes(url)
        self._redis: Any
        if self._seeds is not None:
            self._redis = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self._seeds],
                                       socket_timeout=5, socket_connect_timeout=2)
        else:
            # A blocking pool: a burst of requests (subscribes, awaits) waits for one of POOL_SIZE
            # connections instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S,
                                                            socket_timeout=5, socket_connect_timeout=2,
                                                            health_check_interval=10)
            self._redis = aioredis.Redis(connection_pool=pool)
        self.layout = Layout(1)
        self._layout_read = False  # the layout above came from the store (not the one-bucket default)
        self.healthy = False

    async def start(self) -> None:
        try:
            await self._redis.ping()
            self.layout = await self._read_layout()
            self.healthy = True
        except (RedisError, OSError, LayoutError) as exc:
            log.warning("redis not reachable yet: %s", exc)

    async def _read_layout(self, required: bool = False) -> Layout:
        raw = await self._redis.get(LAYOUT)
        if raw is None and required:
            raise LayoutError(f"no {LAYOUT} yet: the consumer writes it when it starts")
        found = parse_layout_value(raw)
        self._layout_read = raw is not None
        return found

    async def stop(self) -> None:
        self.healthy = False
        await self._redis.aclose()

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        if not keys:
            return {}
        if self._seeds is not None and not self._layout_read:
            # on a cluster, reading with the wrong bucket count would answer "never changed": read it first
            try:
                self.layout = await self._read_layout(required=True)
            except (RedisError, OSError, LayoutError) as exc:
                raise BackendUnavailable(f"the version store's layout is not known yet: {exc}") from exc
        if self.layout.spread:
            return await self._read_spread(keys)
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

    async def _read_spread(self, keys: Sequence[str]) -> dict[str, str | None]:
        groups = self.layout.by_bucket(list(keys))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for bucket, bucket_keys in groups.items():
                    pipe.hmget(self.layout.versions(bucket), bucket_keys)
                    pipe.get(self.layout.horizon(bucket))
                pipe.hgetall(PREFIXES)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(str(exc)) from exc
        released = PrefixSet({_text(p) or "": _text(v) or "" for p, v in replies[-1].items()})
        found: dict[str, str | None] = {}
        for i, bucket_keys in enumerate(groups.values()):
            own, floor = replies[2 * i], _text(replies[2 * i + 1])
            for key, version in zip(bucket_keys, own, strict=True):
                found[key] = released.version_of(_text(version), key, floor)
        return {k: found[k] for k in keys}

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
        if self._seeds is None:
            self.layout = await self._layout_or_one()
        if self._seeds is not None or self.layout.spread:
            async for event in self._spread_events():
                yield event
            return
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
                    await pubsub.aclose()

    async def _layout_or_one(self) -> Layout:
        try:
            return await self._read_layout()
        except (RedisError, OSError, LayoutError):
            return self.layout

    async def _groups(self) -> dict[tuple[str, int], list[str]]:
        if self._seeds is None:
            kwargs = self._redis.connection_pool.connection_kwargs
            node = (str(kwargs.get("host")), int(kwargs.get("port", 6379)))
            return channels_by_node(self.layout, lambda _channel: node)
        await self._redis.initialize()  # a fresh client after every break: a fresh slot map

        def owner(channel: str) -> tuple[str, int]:
            served = self._redis.get_node_from_key(channel)
            return str(served.host), int(served.port)

        return channels_by_node(self.layout, owner)

    async def _spread_events(self) -> AsyncIterator[Event]:
        """One reader per node (gateway/shard_readers.py); after any break, a fresh slot map and RESYNC."""
        delay = RECONNECT_MIN_S
        while True:
            try:
                self.layout = await asyncio.wait_for(self._read_layout(required=self._seeds is not None),
                                                     SETUP_TIMEOUT_S)
                groups = await asyncio.wait_for(self._groups(), SETUP_TIMEOUT_S)
                password = self._password()
                async for published in spread_stream(self.layout, groups, Joiner(), self.watermark, password):
                    if published is None:
                        self.healthy = True
                        delay = RECONNECT_MIN_S
                        yield RESYNC  # anything released while we were not subscribed is recovered from versions
                    else:
                        yield published
            except (RedisError, OSError, ShardBreak, LayoutError, BackendUnavailable, TimeoutError) as exc:
                self.healthy = False
                log.warning("redis shard subscriptions lost (%s); reconnecting in %.2fs", exc, delay)
                if self._seeds is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._redis.aclose()
                    self._redis = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self._seeds],
                                               socket_timeout=5, socket_connect_timeout=2)
                await asyncio.sleep(delay)
                delay = min(delay * 2, SPREAD_RECONNECT_MAX_S)

    def _password(self) -> str | None:
        if self._seeds is not None:
            return None
        value = self._redis.connection_pool.connection_kwargs.get("password")
        return str(value) if value else None

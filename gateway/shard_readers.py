"""Spread releases in: one reader per Redis node, joined back into one stream of `Published`.

A spread layout (contract/redis_buckets.py) publishes each release as parts on its buckets' shard
channels and a control message on `{fw}:ctl`. Each node's channels are read by a task of its own (one
reader polling every node in turn delivered up to 1.7 s late), into one bounded queue; the `Joiner`
puts each release back together, in release order. Any break (a node lost, a slot moved away: Redis
then sends `sunsubscribe`, a part that never came, a missed control message, a full queue) ends the
stream with ShardBreak: the backend reconnects with a fresh slot map and yields RESYNC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contract.redis_buckets import CONTROL_CHANNEL, Joiner, Layout, decode_control, decode_part
from contract.redis_layout import Published

log = logging.getLogger(__name__)

QUEUE_BOUND = 100_000  # messages read from the nodes and not yet joined; past it: resync
TICK_S = 0.25  # how often the joiner looks for parts that are overdue while nothing arrives
READ_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 2.0
SUBSCRIBE_TIMEOUT_S = 5.0

Address = tuple[str, int]


class ShardBreak(Exception):
    """The spread stream has a gap: reconnect, then resync from the versions."""


def channels_by_node(layout: Layout, owner: Callable[[str], Address]) -> dict[Address, list[str]]:
    """Which node each shard channel must be read on (the master serving its slot)."""
    groups: dict[Address, list[str]] = {}
    for channel in layout.channels():
        groups.setdefault(owner(channel), []).append(channel)
    return groups


async def _read_node(address: Address, channels: list[str], queue: asyncio.Queue[tuple[str, bytes] | Exception],
                     subscribed: asyncio.Event, password: str | None) -> None:
    client = aioredis.Redis(host=address[0], port=address[1], password=password, socket_connect_timeout=2,
                            health_check_interval=10)
    pubsub = client.pubsub()
    try:
        for channel in channels:  # one SSUBSCRIBE per channel: channels of several slots are refused together
            await pubsub.ssubscribe(channel)
        pending = set(channels)
        while True:
            msg = await pubsub.get_message(timeout=READ_TIMEOUT_S)
            if msg is None:
                continue
            kind, channel = msg.get("type"), msg.get("channel")
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            if kind == "ssubscribe":
                pending.discard(name)
                if not pending:
                    subscribed.set()
            elif kind == "sunsubscribe":
                raise ShardBreak(f"{address[0]}:{address[1]} dropped {name} (its slot moved)")
            elif kind == "smessage":
                queue.put_nowait((name, msg["data"]))  # full: this reader ends, and the stream sees it done
    except (RedisError, OSError, ShardBreak) as exc:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(exc)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


async def spread_stream(layout: Layout, groups: dict[Address, list[str]], joiner: Joiner,
                        read_watermark: Callable[[], Awaitable[str | None]],
                        password: str | None = None) -> AsyncIterator[Published | None]:
    """Subscribe every node's channels, then yield None once (subscribed: the caller resyncs; `joiner`
    is reset to the watermark read then) and every joined release after it. Raises ShardBreak."""
    queue: asyncio.Queue[tuple[str, bytes] | Exception] = asyncio.Queue(QUEUE_BOUND)
    bucket_of_channel = {layout.channel(b): b for b in range(layout.buckets)}
    ready = [asyncio.Event() for _ in groups]
    readers = [asyncio.create_task(_read_node(address, channels, queue, event, password))
               for (address, channels), event in zip(groups.items(), ready, strict=True)]
    try:
        waiting: asyncio.Future[Any] = asyncio.gather(*(event.wait() for event in ready))
        done, _ = await asyncio.wait({waiting, *readers}, timeout=SUBSCRIBE_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiting not in done:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            failed = [address for address, reader in zip(groups, readers, strict=True) if reader.done()]
            raise ShardBreak(f"subscribing failed on {failed or 'every node (timed out)'}")
        joiner.reset(await asyncio.wait_for(read_watermark(), SUBSCRIBE_TIMEOUT_S))
        yield None
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), TICK_S)
            except TimeoutError:
                if any(reader.done() for reader in readers):
                    raise ShardBreak("a node's reader stopped (its queue was full)") from None
                joined = joiner.tick(time.monotonic())
            else:
                if isinstance(item, Exception):
                    raise ShardBreak(str(item))
                channel, data = item
                try:
                    if channel == CONTROL_CHANNEL:
                        joined = joiner.feed_control(decode_control(data), time.monotonic())
                    else:
                        joined = joiner.feed_part(decode_part(bucket_of_channel[channel], data), time.monotonic())
                except (ValueError, KeyError) as exc:
                    log.error("undecodable message on %s: %s", channel, exc)
                    continue
            if joined is None:
                raise ShardBreak("a release could not be joined (a part or a control message was missed)")
            for published in joined:
                yield published
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.wait(readers, timeout=STOP_TIMEOUT_S)  # a reader stuck on a dead node is left to die

"""Where versions live and how released batches reach this process.

Delivery guarantee of `events()`: every batch released while connected, in release order; after any
break it yields RESYNC once reconnected, and the hub then re-reads the current version of every
subscribed key, so a batch missed during the break is recovered from the versions (only the latest
version of a key matters). Backends are picked by URL scheme: redis:// or memory://.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final, Protocol

from contract.redis_layout import Published


class _Resync:
    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = _Resync()
Event = Published | _Resync


class Backend(Protocol):
    healthy: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        """Each key's effective version (its own, or a newer truncate of a prefix it starts with)."""
        ...

    async def watermark(self) -> str | None: ...

    async def tx_version(self, tx_id: str) -> str | None:
        """The version transaction `tx_id` was released at, if it was (recently: markers expire)."""
        ...

    def events(self) -> AsyncIterator[Event]: ...


class BackendUnavailable(Exception):
    """The version store did not answer; requests get the `unavailable` error code."""


def backend_for(url: str) -> Backend:
    if url.startswith("memory://"):
        from gateway.backend_memory import MemoryBackend

        return MemoryBackend()
    if url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
        from gateway.backend_redis import RedisBackend

        return RedisBackend(url)
    raise ValueError(f"no backend for {url!r}: use redis://…, redis+cluster://host:port,… or memory://")

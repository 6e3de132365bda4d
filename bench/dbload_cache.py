"""The shared read-through cache of the freshwire-cached arm: entries keyed by (key, version).

On an invalidation {key: version}, every client asks the cache for (key, version); only the first
asker's request reads Postgres, the others wait for that read. An entry at a newer version also
answers a request for an older one (a key's versions only increase, and a newer row is what a
client asking for an older version wants next anyway). So Postgres sees at most one read per
(key, version), however many clients watch the key.

It lives in the clients' process (one asyncio loop), which all clients of the arm share: in a
deployment it would be a shared service (Redis, an HTTP cache) one hop away, which this leaves out.
`VersionedEntries` is the pure core; `SharedCache` the asyncio shell.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")
MAX_KEYS = 10_000   # at the limit the least recently used key is dropped (its next request reads again)


class VersionedEntries(Generic[T]):
    """The newest entry per key, at most `max_keys` keys (least recently used dropped first)."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._entries: OrderedDict[str, tuple[str, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, version: str) -> T | None:
        """The entry for `key` if it is at `version` or newer."""
        held = self._entries.get(key)
        if held is None or held[0] < version:
            return None
        self._entries.move_to_end(key)
        return held[1]

    def put(self, key: str, version: str, value: T) -> bool:
        """Hold `value` for `key` unless a newer version is held; True when it was stored."""
        held = self._entries.get(key)
        if held is not None and held[0] > version:
            return False
        self._entries[key] = (version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return True

    def discard(self, key: str, value: T) -> None:
        """Forget `key` if `value` is still its entry (a failed read must not answer later requests)."""
        held = self._entries.get(key)
        if held is not None and held[1] is value:
            del self._entries[key]


class SharedCache(Generic[V]):
    """Read-through over `load(key, version)`; `loads` counts the reads, `hits` the requests they spared."""

    def __init__(self, load: Callable[[str, str], Awaitable[V]], max_keys: int = MAX_KEYS) -> None:
        self._load = load
        self._entries: VersionedEntries[asyncio.Future[V]] = VersionedEntries(max_keys)
        self._tasks: set[asyncio.Task[None]] = set()
        self.loads = 0
        self.hits = 0

    async def get(self, key: str, version: str) -> V:
        future = self._entries.get(key, version)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._entries.put(key, version, future)
            self.loads += 1
            task = asyncio.create_task(self._fill(key, version, future))   # outlives a cancelled asker
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.hits += 1
        return await asyncio.shield(future)

    async def _fill(self, key: str, version: str, future: asyncio.Future[V]) -> None:
        try:
            future.set_result(await self._load(key, version))
        except Exception as exc:
            self._entries.discard(key, future)
            future.set_exception(exc)

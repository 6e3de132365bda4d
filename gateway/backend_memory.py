"""An in-process backend for tests and single-process use: the same advance-only-forward semantics
as the Redis release script, with `release()` standing in for the cdc consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from contract.redis_layout import PrefixSet, Published
from gateway.backend import RESYNC, Event

QUEUE_BOUND = 100_000


class MemoryBackend:
    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self.prefixes: dict[str, str] = {}
        self.wm: str | None = None
        self.txs: dict[str, str] = {}
        self.horizon: str | None = None  # the newest version trimmed (as TRIM_LUA keeps it)
        self.healthy = True
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_BOUND)

    async def start(self) -> None:
        self.healthy = True

    async def stop(self) -> None:
        self.healthy = False

    def release(self, version: str, keys: Sequence[str] = (), prefixes: Sequence[str] = (),
                commit_ts_ms: int = 0, tx_id: str = "", lapse: str = "",
                data: dict[str, str] | None = None) -> Published | None:
        """`data`: key -> payload JSON text; as in the release script, only advanced keys carry theirs."""
        advanced = [k for k in dict.fromkeys(keys) if self.versions.get(k, "") < version]
        for k in advanced:
            self.versions[k] = version
        advanced_p = [p for p in dict.fromkeys(prefixes) if self.prefixes.get(p, "") < version]
        for p in advanced_p:
            self.prefixes[p] = version
        if tx_id:
            self.txs[tx_id] = version
        moved = self.wm is None or self.wm < version
        if moved:
            self.wm = version
        if not (advanced or advanced_p or moved):
            return None
        event = Published(version, tuple(advanced), tuple(advanced_p), commit_ts_ms, self.wm or version, tx_id,
                          lapse=lapse, data={k: data[k] for k in advanced if k in data} if data else {})
        self._queue.put_nowait(event)
        return event

    def resync(self) -> None:
        """Simulate a reconnect after an outage."""
        self._queue.put_nowait(RESYNC)

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        released = PrefixSet(self.prefixes)
        return {k: released.version_of(self.versions.get(k), k, self.horizon) for k in keys}

    def trim(self, keys: Sequence[str]) -> None:
        """Drop these keys' versions as the retention horizon does (contract/redis_layout.py TRIM_LUA)."""
        for k in keys:
            v = self.versions.pop(k, None)
            if v is not None and (self.horizon is None or v > self.horizon):
                self.horizon = v

    async def watermark(self) -> str | None:
        return self.wm

    async def tx_version(self, tx_id: str) -> str | None:
        return self.txs.get(tx_id)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()

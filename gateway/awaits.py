"""Waiting for write tokens to become visible: event-driven, no polling.

A waiter is registered before the version store is asked, so a release that happens in between
is seen either by the read or by the event; after a backend break the pump re-checks every
pending token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.backend import Backend


class TooManyAwaits(Exception):
    """The process holds `limit` pending awaits; the request gets `too_many_awaits`."""


class Awaits:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}
        self.pending = 0

    def register(self, tx_id: str) -> asyncio.Future[str]:
        if self.pending >= self.limit:
            raise TooManyAwaits(f"{self.pending} awaits pending")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, set()).add(future)
        self.pending += 1
        return future

    @property
    def tokens(self) -> int:
        """Distinct transactions being awaited (entries of the waiter index)."""
        return len(self._waiters)

    def discard(self, tx_id: str, future: asyncio.Future[str]) -> None:
        waiters = self._waiters.get(tx_id)
        if waiters is not None and future in waiters:
            waiters.discard(future)
            self.pending -= 1
            if not waiters:
                del self._waiters[tx_id]

    def resolve(self, tx_id: str, version: str) -> None:
        for future in self._waiters.get(tx_id, ()):
            if not future.done():
                future.set_result(version)

    def tx_ids(self) -> list[str]:
        return list(self._waiters)

    async def wait(self, backend: Backend, tx_id: str, timeout_s: float,
                   delivered: Callable[[], str | None] | None = None) -> str | None:
        """The version the transaction was released at, or None after `timeout_s`.

        With `delivered` (the newest release this process has handed to its connections), a
        transaction the version store knows but this process has not delivered yet is waited for on
        the event stream, so `visible` never overtakes its own transaction's `invalidate`.
        """
        future = self.register(tx_id)
        try:
            version = await backend.tx_version(tx_id)
            if version is not None and (delivered is None or (delivered() or "") >= version):
                return version
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            self.discard(tx_id, future)

    async def recheck(self, backend: Backend) -> None:
        """After a backend break: resolve tokens released while events were not arriving."""
        for tx_id in self.tx_ids():
            version = await backend.tx_version(tx_id)
            if version is not None:
                self.resolve(tx_id, version)

"""The Python client against a real uvicorn server (memory backend): a resume refused with
`unavailable` is retried. Found by the chaos harness: a client reconnecting while Redis restarted
stayed connected with nothing subscribed.

`serve()` runs such a server for the other tests of the client (test_client_bursts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import uvicorn
from gw_support import SECRET, token, ver

from gateway.__main__ import WS_IMPL
from gateway.app import create_app
from gateway.backend import BackendUnavailable
from gateway.backend_memory import MemoryBackend
from gateway.client import Client
from gateway.settings import GatewaySettings
from gateway.state import GatewayState


class FlakyBackend(MemoryBackend):
    """Refuses version reads while `down` is set, as the Redis backend does during an outage."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    async def read_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        if self.down:
            self.refused += 1
            raise BackendUnavailable("down")
        return await super().read_versions(keys)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(backend: MemoryBackend, **settings: Any) -> AsyncIterator[tuple[str, GatewayState]]:
    """A real gateway (uvicorn, this event loop) on a free port: yields its /ws URL and its state."""
    port = _free_port()
    app = create_app(GatewaySettings(jwt_secret=SECRET, redis_url="memory://", **settings), backend=backend)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws=WS_IMPL))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"ws://127.0.0.1:{port}/ws", app.state.fw
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, FlakyBackend]]:
    backend = FlakyBackend()
    async with serve(backend) as (url, _state):
        yield url, backend


async def test_client_resume_refused_as_unavailable_is_retried(served: tuple[str, FlakyBackend]) -> None:
    url, backend = served
    async with Client(url, token=token(), min_backoff_s=0.02, max_backoff_s=0.1) as c:
        await c.subscribe(["a"])
        backend.down = True
        await c.drop()                                   # reconnects; the resume is refused
        for _ in range(200):
            if backend.refused >= 2:
                break
            await asyncio.sleep(0.01)
        assert backend.refused >= 2
        backend.down = False                             # the store is back: the retried resume succeeds
        backend.release(ver(7), ["a"])                   # before or after it: `since` covers both
        assert await c.next_batch(5) == {"a": ver(7)}

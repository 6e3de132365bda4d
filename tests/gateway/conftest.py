"""Fixtures for gateway tests (helpers live in gw_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gw_support import Gateway, settings
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.backend_memory import MemoryBackend


@pytest.fixture
def make_gateway() -> Iterator[Callable[..., Gateway]]:
    """make_gateway(backend=None, **settings) -> a running Gateway (closed at the end of the test)."""
    clients: list[TestClient] = []

    def make(backend: MemoryBackend | None = None, **overrides: Any) -> Gateway:
        backend = backend or MemoryBackend()
        s = settings(**overrides)
        client = TestClient(create_app(s, backend=backend))
        client.__enter__()
        clients.append(client)
        gw = Gateway(client, backend, s)
        gw.wait(lambda: gw.state.pump_alive)
        return gw

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()

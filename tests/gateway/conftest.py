"""Fixtures for gateway tests (helpers live in gw_support)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from gw_support import Gateway, gateway_factory

make_gateway = pytest.fixture(gateway_factory)


@pytest.fixture
def gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()

"""Shared fixtures. End-to-end tests (tests/e2e, marker `stack`) run against the real native stack,
which the test session starts itself (reusing parts already running) and stops at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors import stack
from connectors.stack_settings import StackSettings, load_stack_settings

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.stack)


# The test stack runs as the product is meant to: a real standby lagging 300 ms, the consumer
# releasing only what the standby has replayed, and the demo reading from the standby.
STACK_DEFAULTS = {"FRESHWIRE_REPLICA": "1", "FRESHWIRE_REPLICA_DELAY_MS": "300", "FRESHWIRE_RELEASE_GATING": "1"}


@pytest.fixture(scope="session")
def stack_settings() -> Iterator[StackSettings]:
    for name, value in STACK_DEFAULTS.items():
        os.environ.setdefault(name, value)
    settings = load_stack_settings()
    started = stack.up(settings, with_apps=True, two_gateways=True, quiet=True)
    try:
        yield settings
    finally:
        if os.environ.get("FRESHWIRE_KEEP_STACK") != "1":
            stack.down(settings, only=started, quiet=True)

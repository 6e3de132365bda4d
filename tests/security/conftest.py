"""Fixtures for the security suite: the real gateway app on the in-memory backend (as in tests/gateway),
and a guard that fails any test during which the server logged an error or a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sec_support import gateway_factory

WATCHED = ("gateway", "uvicorn", "starlette", "asyncio")


class _ServerErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(WATCHED):
            return
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    """Fails the test if the gateway, uvicorn, starlette or asyncio logged an ERROR or a traceback."""
    handler = _ServerErrors()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    assert not handler.records, "server logged errors:\n" + "\n".join(
        f"{r.name} {r.levelname}: {r.getMessage()}\n{logging.Formatter().formatException(r.exc_info)}"
        if r.exc_info else f"{r.name} {r.levelname}: {r.getMessage()}" for r in handler.records)


make_gateway = pytest.fixture(gateway_factory)

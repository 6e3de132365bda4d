"""Helpers for end-to-end tests: real writes through psycopg, real clients over real sockets."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import psycopg

from cdc.versions import lsn_of_text, version_of_lsn
from connectors.stack_settings import StackSettings
from gateway.auth import mint
from gateway.client import Client

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")


def token(patterns: list[str], ttl_s: int = 600) -> str:
    return mint(SECRET, "e2e", patterns, ttl_s)


def ws_url(s: StackSettings, port: int | None = None) -> str:
    return f"ws://{s.host}:{port or s.gateway_port}/ws"


def client(s: StackSettings, patterns: list[str], port: int | None = None) -> Client:
    return Client(ws_url(s, port), token=token(patterns), record=True)


def connect(s: StackSettings) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(s.app_dsn, autocommit=False)


def write(s: StackSettings, sql: str, params: tuple[object, ...] = ()) -> tuple[str, str, str]:
    """Run `sql` in one transaction; returns (txid, insert LSN inside it, insert LSN after commit) as versions."""
    with connect(s) as conn:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            cur.execute("SELECT pg_current_xact_id()::text, pg_current_wal_insert_lsn()::text")
            row = cur.fetchone()
            assert row is not None
            txid, inside = str(row[0]), str(row[1])
        conn.commit()
        after = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert after is not None
    return txid, version_of_lsn(lsn_of_text(inside)), version_of_lsn(lsn_of_text(str(after[0])))


async def until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def assert_in_order_once(received: list[tuple[str, str]]) -> None:
    """Per key, versions strictly increase (so no (key, version) twice)."""
    last: dict[str, str] = {}
    for key, version in received:
        assert version > last.get(key, ""), f"{key}: {version} after {last.get(key)}"
        last[key] = version


async def settle(c: Client, floors: dict[str, str], timeout_s: float = 20.0) -> None:
    """Wait until the client holds each key at a version above its floor (e.g. the insert LSN of the
    setup write), then forget what was received so far: the test starts from a quiet client."""
    await until(lambda: all((c.versions.get(k) or "") > f for k, f in floors.items()), timeout_s,
                what=f"setup writes visible for {sorted(floors)}")
    await asyncio.sleep(0.05)
    while True:
        try:
            await c.next_batch(0.01)
        except TimeoutError:
            break
    c.received.clear()

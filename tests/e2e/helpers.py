"""Helpers for end-to-end tests: real writes through psycopg, real clients over real sockets."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from connectors.stack_settings import StackSettings
from contract.versions import lsn_of_text, version_of_lsn
from gateway.auth import mint
from gateway.client import Client

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Debian's Chromium (connectors/install.sh installs it), headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: connectors/install.sh installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")


def token(patterns: list[str], ttl_s: int = 600) -> str:
    return mint(SECRET, "e2e", patterns, ttl_s)


def ws_url(s: StackSettings, port: int | None = None) -> str:
    return f"ws://{s.host}:{port or s.gateway_port}/ws"


def client(s: StackSettings, patterns: list[str], port: int | None = None) -> Client:
    return Client(ws_url(s, port), token=token(patterns), record=True)


def connect(s: StackSettings) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(s.app_dsn, autocommit=False)


def write(s: StackSettings, sql: str, params: tuple[object, ...] = (), dsn: str | None = None) -> tuple[str, str, str]:
    """Run `sql` in one transaction (as the app, or as `dsn`); returns (txid, insert LSN inside it,
    insert LSN after commit) as versions."""
    with psycopg.connect(dsn or s.app_dsn, autocommit=False) as conn:
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


def next_id(s: StackSettings, table: str) -> int:
    """A fresh primary key from the table's own sequence (unique across test modules and runs)."""
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT nextval('{table}_id_seq')").fetchone()
    assert row is not None
    return int(row[0])


# Per key, the WAL position inside its last setup write: tests wait until keys are past it.
floors: dict[str, str] = {}


def new_board(s: StackSettings, tenant: int = 1) -> int:
    board = next_id(s, "boards")
    inside = write(s, "INSERT INTO boards (id, tenant_id, name) VALUES (%s, %s, 'e2e')", (board, tenant))[1]
    floors.update(dict.fromkeys([f"board:{board}", f"tenant:{tenant}:board:{board}"], inside))
    return board


def new_card(s: StackSettings, board: int, tenant: int = 1) -> int:
    card = next_id(s, "cards")
    inside = write(s, "INSERT INTO cards (id, tenant_id, board_id, title) VALUES (%s, %s, %s, 'e2e')",
                   (card, tenant, board))[1]
    floors.update(dict.fromkeys([f"card:{card}", f"board:{board}", f"tenant:{tenant}:card:{card}",
                                 f"tenant:{tenant}:board:{board}"], inside))
    return card


async def subscribe_settled(c: Client, keys: list[str]) -> None:
    """Subscribe, then wait until the setup writes are visible for every key, and start quiet."""
    await c.subscribe(keys)
    await settle(c, {k: floors[k] for k in keys if k in floors})


class CardWriter(threading.Thread):
    """Commits `limit` one-row transactions round-robin over `cards` until stopped, remembering for
    each card the WAL window (inside its last transaction, after its commit) read from the database."""

    def __init__(self, s: StackSettings, cards: list[int], limit: int) -> None:
        super().__init__(name="card-writer")
        self.s, self.cards, self.limit = s, cards, limit
        self.stop = threading.Event()
        self.last: dict[int, tuple[str, str]] = {}
        self.counts: dict[int, int] = dict.fromkeys(cards, 0)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and n < self.limit:
            card = self.cards[n % len(self.cards)]
            _tx, inside, after = write(self.s, "UPDATE cards SET version = version + 1 WHERE id = %s", (card,))
            self.last[card] = (inside, after)
            self.counts[card] += 1
            n += 1

    def finish(self) -> None:
        self.stop.set()
        self.join()

    def reached_by(self, c: Client) -> bool:
        """Every card at a version inside its last transaction's window: nothing lost."""
        return all(low < (c.versions.get(f"card:{card}") or "") <= high for card, (low, high) in self.last.items())

"""The demo board applies the rows pushed with invalidations (#14) without a refetch: real headless
Chromium (Debian's), driven by Playwright, on the real stack."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from connectors.stack_settings import StackSettings
from tests.e2e.helpers import launch_chromium, write

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def chromium(stack_settings: StackSettings) -> Iterator[Browser]:
    with launch_chromium() as b:
        yield b


def _post(s: StackSettings, path: str, body: dict[str, object]) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{s.host}:{s.demo_port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        result: dict[str, Any] = json.load(r)
    return result


def _card(card_id: int, column: str | None = None) -> str:
    scope = f'.column[data-status="{column}"] ' if column else ""
    return f'{scope}.card[data-id="{card_id}"]'


def _stats(page: Page) -> dict[str, int]:
    stats: dict[str, int] = page.evaluate("() => ({...window.__board.stats})")
    return stats


def test_browser_payload_board_applies_pushed_rows_without_refetching(chromium: Browser,
                                                                      stack_settings: StackSettings) -> None:
    s = stack_settings
    page = chromium.new_context(viewport={"width": 1100, "height": 700}).new_page()
    page.goto(f"http://{s.host}:{s.demo_port}/?user=payload")
    page.wait_for_selector("#status[data-state=open]", timeout=10_000)
    card = _post(s, "/api/boards/1/cards", {"title": "Pushed card", "owner": "ada"})["card"]
    card_id = int(card["id"])
    page.wait_for_selector(_card(card_id, "todo"), timeout=5_000)
    # The card's own subscription is live and its first invalidate (subscribed with since=null: no row)
    # was handled: every refetch it caused has been counted.
    page.wait_for_function("(key) => window.__board.fw.versions.get(key) != null", arg=f"tenant:1:card:{card_id}",
                           timeout=5_000)
    before = _stats(page)

    # Someone else moves and renames it: the invalidate carries the row, the board shows it as it is.
    _post(s, f"/api/cards/{card_id}", {"changes": {"status": "done", "title": "Pushed and moved"},
                                       "expected_version": card["version"], "idempotency_key": f"push-{card_id}"})
    page.wait_for_selector(_card(card_id, "done"), timeout=5_000)
    assert page.inner_text(f"{_card(card_id)} .title") == "Pushed and moved"
    after = _stats(page)
    assert after["pushed"] == before["pushed"] + 1
    assert after["refetched"] == before["refetched"], "the pushed row was applied without a refetch"

    # A delete pushes null: the card leaves the board, again without reading it.
    write(s, "DELETE FROM cards WHERE id = %s", (card_id,))
    page.wait_for_selector(_card(card_id), state="detached", timeout=5_000)
    page.wait_for_function("(n) => window.__board.stats.pushed > n", arg=after["pushed"], timeout=5_000)
    assert _stats(page)["refetched"] == before["refetched"]

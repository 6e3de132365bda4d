"""The demo board in real headless Chromium (Debian's), driven by Playwright, on the real stack."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from connectors.stack_settings import REPO, StackSettings
from tests.e2e.helpers import launch_chromium

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocketRoute

SCREENSHOT = REPO / "docs" / "board.png"

playwright_sync = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser(stack_settings: StackSettings) -> Iterator[Browser]:
    with launch_chromium() as b:
        yield b


def _post(s: StackSettings, path: str, body: dict[str, object]) -> dict[str, Any]:
    req = urllib.request.Request(f"http://{s.host}:{s.demo_port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        result: dict[str, Any] = json.load(r)
    return result


def _open(browser: Browser, s: StackSettings, user: str) -> Page:
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    page = context.new_page()
    page.goto(f"http://{s.host}:{s.demo_port}/?user={user}")
    page.wait_for_selector("#status[data-state=open]", timeout=10_000)
    return page


def _card(page: Page, card_id: int, column: str | None = None) -> str:
    scope = f'.column[data-status="{column}"] ' if column else ""
    return f'{scope}.card[data-id="{card_id}"]'


def test_browser_edit_in_one_window_appears_in_the_other(browser: Browser, stack_settings: StackSettings) -> None:
    s = stack_settings
    a, b = _open(browser, s, "ada"), _open(browser, s, "bob")
    card = _post(s, "/api/boards/1/cards", {"title": "Browser test card", "owner": "ada"})["card"]
    card_id = int(card["id"])
    for page in (a, b):
        page.wait_for_selector(_card(page, card_id, "todo"), timeout=2_000)
    a.click(f'{_card(a, card_id)} button[data-move="doing"]')
    b.wait_for_selector(_card(b, card_id, "doing"), timeout=2_000)
    # confirmed in the editing window once visible (the pending mark goes away)
    a.wait_for_selector(f'{_card(a, card_id, "doing")}:not(.pending)', timeout=5_000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    b.screenshot(path=str(SCREENSHOT), full_page=True)


def test_browser_conflicting_edit_shows_the_conflict(browser: Browser, stack_settings: StackSettings) -> None:
    s = stack_settings
    a = _open(browser, s, "ada")
    card = _post(s, "/api/boards/1/cards", {"title": "Contested card", "owner": "ada"})["card"]
    card_id, version = int(card["id"]), int(card["version"])
    a.wait_for_selector(_card(a, card_id, "todo"), timeout=2_000)
    # Someone else moves it first. This window edits what it read before that (the test pins its
    # copy at the old version, as if the click had raced the invalidation).
    _post(s, f"/api/cards/{card_id}", {"changes": {"status": "done"}, "expected_version": version,
                                       "idempotency_key": f"other-{card_id}"})
    a.evaluate("([id, v]) => { window.__board.cards.get(id).version = v; }", [card_id, version])
    a.click(f'{_card(a, card_id)} button[data-move="doing"]')
    a.wait_for_selector("#conflict:not([hidden])", timeout=2_000)
    assert "Someone else changed this card first" in a.inner_text("#conflict")
    a.wait_for_selector(_card(a, card_id, "done"), timeout=2_000)


def test_browser_window_whose_socket_is_cut_catches_up(browser: Browser, stack_settings: StackSettings) -> None:
    s = stack_settings
    b = _open(browser, s, "bob")
    first = _post(s, "/api/boards/1/cards", {"title": "Offline card 1"})["card"]
    second = _post(s, "/api/boards/1/cards", {"title": "Offline card 2"})["card"]
    ids = [int(first["id"]), int(second["id"])]
    for card_id in ids:
        b.wait_for_selector(_card(b, card_id, "todo"), timeout=2_000)
    b.context.set_offline(True)
    b.wait_for_selector("#status[data-state=reconnecting]", timeout=10_000)
    for n, card in enumerate((first, second)):
        _post(s, f"/api/cards/{card['id']}", {"changes": {"status": "done"},
                                              "expected_version": card["version"],
                                              "idempotency_key": f"offline-{ids[n]}"})
    b.context.set_offline(False)
    b.wait_for_selector("#status[data-state=open]", timeout=15_000)
    for card_id in ids:
        b.wait_for_selector(_card(b, card_id, "done"), timeout=5_000)


def test_browser_lapse_shows_a_banner_until_clicked(browser: Browser, stack_settings: StackSettings) -> None:
    """The board says so when a guarantee lapsed: a `lapse` frame, put on the real gateway's socket."""
    s = stack_settings
    page = browser.new_context(viewport={"width": 1100, "height": 700}).new_page()
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:  # the page talks to the real gateway; the test can add frames
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/ws\?"), through)
    page.goto(f"http://{s.host}:{s.demo_port}/?user=lapse")
    page.wait_for_selector("#status[data-state=open]", timeout=10_000)
    card = _post(s, "/api/boards/1/cards", {"title": "Lapsed card"})["card"]
    card_id = int(card["id"])
    page.wait_for_selector(_card(page, card_id, "todo"), timeout=2_000)
    assert page.is_hidden("#lapse")
    lapse = {"type": "lapse", "reason": "replica_lag", "keys": [f"tenant:1:card:{card_id}"], "version": None}
    sockets[-1].send(json.dumps(lapse))
    page.wait_for_selector("#lapse:not([hidden])", timeout=2_000)
    assert "older data" in page.inner_text("#lapse")
    page.click("#lapse")
    page.wait_for_selector("#lapse", state="hidden", timeout=2_000)
    page.wait_for_selector(_card(page, card_id, "todo"), timeout=2_000)  # the re-read changed nothing

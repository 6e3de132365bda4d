"""The demo board's HTTP server (Starlette): the page, its JSON API, and a dev session token.

    python -m demo --port 18090
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from contract import envflags
from demo.store import COLUMNS, Conflict, Store
from gateway.auth import mint
from gateway.errors import SettingsError
from gateway.settings import DEV_SECRET

STATIC = Path(__file__).parent / "static"
CLIENT_JS = Path(__file__).resolve().parent.parent / "clients" / "js" / "freshwire.js"
MAX_TITLE, MAX_OWNER, MAX_IDEMPOTENCY_KEY = 200, 64, 128
DEFAULT_DSN = "postgresql://app:app@127.0.0.1:15432/app"


@dataclass(frozen=True)
class DemoSettings:
    """FRESHWIRE_DEMO_DSN, FRESHWIRE_DEMO_READ_DSN, FRESHWIRE_DEMO_GATEWAY_WS, FRESHWIRE_JWT_SECRET:
    loaded once by the same loader as every other process (cdc/envflags.py)."""

    demo_dsn: str = DEFAULT_DSN
    demo_read_dsn: str = ""  # empty: read from the primary
    demo_gateway_ws: str = "ws://127.0.0.1:18080/ws"
    jwt_secret: str = DEV_SECRET


def load_demo_settings() -> DemoSettings:
    return DemoSettings(**envflags.values(DemoSettings, "FRESHWIRE_", {}, SettingsError))  # type: ignore[arg-type]


def _err(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _found(found: dict[str, Any] | None, what: str) -> Response:
    return JSONResponse(found) if found else _err(404, "not_found", f"no such {what}")


def _int(raw: str) -> int | None:
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


async def _json(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def create_app(store: Store | None = None, gateway_ws: str | None = None, secret: str | None = None) -> Starlette:
    settings = load_demo_settings()
    store = store or Store(settings.demo_dsn, settings.demo_read_dsn or settings.demo_dsn)
    gateway_ws = gateway_ws or settings.demo_gateway_ws
    secret = secret or settings.jwt_secret
    pools = store

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await pools.open()
        try:
            yield
        finally:
            await pools.close()

    async def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def client_js(_request: Request) -> Response:
        return FileResponse(CLIENT_JS, media_type="text/javascript")

    async def session(request: Request) -> Response:
        user = request.query_params.get("user", "guest")[:32]
        # Development only: a real app mints tokens for its signed-in users.
        return JSONResponse({"gateway": gateway_ws, "token": mint(secret, user, ["tenant:1:*"], 3600),
                             "tenant": 1, "board": 1, "user": user})

    async def board(request: Request) -> Response:
        board_id = _int(request.path_params["board_id"])
        return _found(await store.board(board_id) if board_id is not None else None, "board")

    async def index_(request: Request) -> Response:
        board_id = _int(request.path_params["board_id"])
        return JSONResponse(await store.index(board_id) if board_id is not None else [])

    async def card(request: Request) -> Response:
        card_id = _int(request.path_params["card_id"])
        return _found(await store.card(card_id) if card_id is not None else None, "card")

    async def update_card(request: Request) -> Response:
        card_id = _int(request.path_params["card_id"])
        body = await _json(request)
        if card_id is None or body is None:
            return _err(400, "bad_request", "POST a JSON object to /api/cards/<id>")
        changes = body.get("changes")
        expected, key = body.get("expected_version"), body.get("idempotency_key")
        if not isinstance(changes, dict) or not changes or set(changes) - {"status", "owner", "title"}:
            return _err(400, "bad_request", "changes: an object with status, owner and/or title")
        if "status" in changes and changes["status"] not in COLUMNS:
            return _err(400, "bad_request", f"status is one of {', '.join(COLUMNS)}")
        limits = {"title": MAX_TITLE, "owner": MAX_OWNER, "status": 16}
        if not all(isinstance(v, str) and 0 < len(v) <= limits[k] for k, v in changes.items()):
            return _err(400, "bad_request", "title (<= 200), owner (<= 64) and status are non-empty strings")
        if isinstance(expected, bool) or not isinstance(expected, int):
            return _err(400, "bad_request", "expected_version: the card's version you edited")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            return _err(400, "bad_request", "idempotency_key: 1-128 characters, the same on every retry")
        try:
            result = await store.update_card(card_id, changes, expected, key)
        except Conflict as exc:
            return _err(409, "conflict", "Someone else changed this card first.", current=exc.current)
        return JSONResponse(result)

    async def add_card(request: Request) -> Response:
        board_id = _int(request.path_params["board_id"])
        body = await _json(request)
        title = body.get("title") if body else None
        owner = body.get("owner") if body else None
        if board_id is None or not isinstance(title, str) or not 0 < len(title) <= MAX_TITLE:
            return _err(400, "bad_request", "title: 1-200 characters")
        if owner is not None and (not isinstance(owner, str) or len(owner) > MAX_OWNER):
            return _err(400, "bad_request", "owner: up to 64 characters")
        result = await store.add_card(board_id, title, owner)
        return JSONResponse(result) if result["card"] else _err(404, "not_found", "no such board")

    return Starlette(routes=[
        Route("/", index),
        Route("/client.js", client_js),
        Route("/api/session", session),
        Route("/api/boards/{board_id}", board),
        Route("/api/boards/{board_id}/cards", add_card, methods=["POST"]),
        Route("/api/boards/{board_id}/index", index_),
        Route("/api/cards/{card_id}", card),
        Route("/api/cards/{card_id}", update_card, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)

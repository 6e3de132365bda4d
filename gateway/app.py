"""The gateway's Starlette app: /ws, /v1/versions, /v1/wait, /v1/watermark, /healthz, /readyz,
/metrics, and the lifespan that runs the pump (gateway/pump.py) and the token verifier."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from contract.keys import valid_key
from gateway import errors as E
from gateway import protocol
from gateway.auth import Verifier, token_from
from gateway.awaits import TooManyAwaits
from gateway.backend import Backend, BackendUnavailable, backend_for
from gateway.errors import AuthError, ProtocolError
from gateway.settings import GatewaySettings, load_gateway_settings
from gateway.state import GatewayState
from gateway.tokens import parse_token
from gateway.ws import endpoint

log = logging.getLogger(__name__)
WS_PATH = "/ws"


def _err(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _query_param(request: Request, name: str) -> str:
    """A query parameter with `+` kept as `+` (it is in the key alphabet; form decoding would make it a
    space); %XX escapes are decoded. The first occurrence wins."""
    for part in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == name:
            return unquote(value)
    return ""


async def versions(request: Request) -> Response:
    state: GatewayState = request.app.state.fw
    try:
        grant = state.verifier.verify(token_from(request))
    except AuthError as exc:
        return _err(401, "auth_failed", exc.reason)
    raw = _query_param(request, "keys")
    keys = [k for k in raw.split(",") if k] if raw else []
    if not keys:
        return _err(400, E.BAD_REQUEST, "pass keys=a,b,…")
    if len(keys) > state.settings.max_subscriptions:
        return _err(400, E.TOO_MANY_KEYS, f"at most {state.settings.max_subscriptions} keys")
    bad = [k for k in keys if not valid_key(k)]
    if bad:
        return _err(400, E.INVALID_KEY, "keys are 1-256 characters of A-Z a-z 0-9 _ . : @ / + = -",
                    keys=[k[:256] for k in bad[:20]])
    forbidden = [k for k in keys if not grant.allows(k)]
    if forbidden:
        return _err(403, E.FORBIDDEN, "the token does not cover these keys", keys=forbidden[:100])
    try:
        current = await state.backend.read_versions(list(dict.fromkeys(keys)))
        watermark = await state.backend.watermark()
    except BackendUnavailable:
        return _err(503, E.UNAVAILABLE, "version store unavailable, retry")
    return JSONResponse({"versions": current, "watermark": watermark})


async def wait(request: Request) -> Response:
    """Server-side read-your-writes: 200 once the token's transaction is released, 408 on timeout.

    Authenticated by the Authorization header only: `token` is the write token here.
    """
    state: GatewayState = request.app.state.fw
    try:
        state.verifier.verify(token_from(request, query=False))
    except AuthError as exc:
        return _err(401, "auth_failed", exc.reason)
    token = request.query_params.get("token")
    try:
        tx_id = parse_token(token)
        raw_timeout = request.query_params.get("timeout_ms", "5000")
        # ASCII digits only: str.isdigit() also accepts "²" (which int() refuses); and a bounded length,
        # since int() refuses more than 4300 digits.
        digits = raw_timeout.isascii() and raw_timeout.isdigit() and len(raw_timeout) <= 18
        timeout = protocol.timeout_ms(int(raw_timeout) if digits else -1, state.settings.await_max_ms)
    except ProtocolError as exc:
        return _err(400, exc.code, exc.message)
    try:
        version = await state.awaits.wait(state.backend, tx_id, timeout / 1000)
    except TooManyAwaits:
        return _err(503, E.TOO_MANY_AWAITS, "too many pending awaits, retry")
    except BackendUnavailable:
        return _err(503, E.UNAVAILABLE, "version store unavailable, retry")
    if version is None:
        return _err(408, E.TIMEOUT, f"not released within {timeout} ms")
    return JSONResponse({"visible": True, "token": token, "version": version})


async def watermark(request: Request) -> Response:
    state: GatewayState = request.app.state.fw
    return JSONResponse({"watermark": state.pump.watermark.value})


CLIENT_JS = Path(__file__).resolve().parent.parent / "clients" / "js" / "freshwire.js"


async def client_js(_request: Request) -> Response:
    """The browser client, so a page can `import { connect } from "<gateway>/client.js"`."""
    return FileResponse(CLIENT_JS, media_type="text/javascript", headers={"Access-Control-Allow-Origin": "*"})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: GatewayState = request.app.state.fw
    stall = time.monotonic() - state.pump.watermark.moved_at
    limit = state.settings.max_stream_stall_s
    stream_ok = limit <= 0 or stall <= limit
    auth = state.verifier.problem()
    ready = state.backend.healthy and state.pump.alive and stream_ok and auth is None
    body = {
        "status": "ready" if ready else "not ready",
        "backend": "ok" if state.backend.healthy else "unreachable",
        "auth": auth or "ok",
        "pump": "running" if state.pump.alive else f"crashed: {state.pump.error}",
        "stream": "moving" if stream_ok else f"watermark still for {stall:.0f}s (limit {limit:g}s)",
        "watermark": state.pump.watermark.value,
        "watermark_age_s": round(stall, 3),
        "connections": len(state.hub.sessions),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.fw
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class GatewayApp(Starlette):
    """Starlette, with `/ws` served straight to its endpoint.

    Routing and the exception middleware do nothing for it (the endpoint handles its own errors and
    the middleware re-raises for WebSockets), yet they keep a chain of frames and closures alive for
    the whole life of every connection and wrap every frame sent. Any other path, including `/ws`
    under a root_path, takes the routes below. Middleware added to this app would not see `/ws`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = self
            await endpoint(WebSocket(scope, receive=receive, send=send))
            return
        await super().__call__(scope, receive, send)


def create_app(settings: GatewaySettings | None = None, backend: Backend | None = None) -> Starlette:
    settings = settings or load_gateway_settings()
    state = GatewayState(settings=settings, verifier=Verifier(settings),
                         backend=backend or backend_for(settings.redis_url))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.fw = state
        await state.backend.start()
        await state.verifier.start()  # JWKS keys fetched in the background, never on the loop
        task = asyncio.create_task(state.pump.run(), name="pump")
        log.info("gateway up, backend %s", type(state.backend).__name__)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await state.backend.stop()
            await state.verifier.aclose()

    app = GatewayApp(
        routes=[
            WebSocketRoute(WS_PATH, endpoint),
            Route("/v1/versions", versions),
            Route("/v1/wait", wait),
            Route("/v1/watermark", watermark),
            Route("/client.js", client_js),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
    app.state.fw = state
    app.state.started = time.time()
    return app

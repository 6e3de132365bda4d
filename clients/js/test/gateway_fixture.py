"""A real gateway for the JS client's tests (clients/js/test/gateway.test.js).

uvicorn serves `gateway.app.create_app` with the in-memory backend on a free 127.0.0.1 port, next to
three test-only routes:

- `GET /test/token?patterns=a:*,b` -> a token for those key patterns;
- `POST /test/release` `{"version": "<16 hex>", "keys": [...], "lapse"?: "replica_lag"}` -> the backend
  releases a change (with `lapse`: its subscribers are then told that guarantee lapsed);
- `GET /test/state` -> `{"sessions": [[key, ...], ...], "rate_limited": n, "closes": {code: n}}`.

Prints `READY <port>` on stdout once serving. Exits when stdin closes (the test process went away),
and after `--lifetime-s` in any case, so it never outlives the tests.

    python clients/js/test/gateway_fixture.py [--max-messages-per-s 50] [--lifetime-s 120]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.__main__ import WS_IMPL
from gateway.app import create_app
from gateway.auth import mint
from gateway.backend_memory import MemoryBackend
from gateway.settings import GatewaySettings
from gateway.state import GatewayState

SECRET = "js-client-test-secret-of-at-least-32-bytes"


def build(settings: GatewaySettings) -> tuple[Any, MemoryBackend]:
    backend = MemoryBackend()
    gateway = create_app(settings, backend=backend)

    def state() -> GatewayState:
        fw: GatewayState = gateway.state.fw
        return fw

    async def token(request: Request) -> Response:
        patterns = [p for p in request.query_params.get("patterns", "*").split(",") if p]
        return PlainTextResponse(mint(SECRET, "js-test", patterns, 600))

    async def release(request: Request) -> Response:
        body = await request.json()
        backend.release(str(body["version"]), [str(k) for k in body["keys"]], lapse=str(body.get("lapse") or ""))
        return JSONResponse({"ok": True})

    async def current(_request: Request) -> Response:
        fw = state()
        registry = fw.metrics.registry
        closes = {code: registry.get_sample_value("freshwire_gateway_closes_total", {"code": code})
                  for code in ("4008", "4001", "1011")}
        return JSONResponse({
            "sessions": [sorted(s.known) for s in fw.hub.sessions],
            "rate_limited": registry.get_sample_value("freshwire_gateway_errors_total",
                                                      {"code": "rate_limited"}) or 0,
            "closes": {code: n for code, n in closes.items() if n},
        })

    tests = Starlette(routes=[Route("/test/token", token), Route("/test/release", release, methods=["POST"]),
                              Route("/test/state", current)])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/test/"):
            await tests(scope, receive, send)
        else:
            await gateway(scope, receive, send)

    return app, backend


async def serve(max_messages_per_s: float, lifetime_s: float) -> None:
    settings = GatewaySettings(jwt_secret=SECRET, redis_url="memory://", max_messages_per_s=max_messages_per_s)
    app, _backend = build(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws=WS_IMPL, lifespan="on"))
    loop = asyncio.get_running_loop()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the test process closed the pipe or died
        loop.call_soon_threadsafe(setattr, server, "should_exit", True)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(lifetime_s, setattr, server, "should_exit", True)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-messages-per-s", type=float, default=GatewaySettings.max_messages_per_s)
    parser.add_argument("--lifetime-s", type=float, default=120.0)
    args = parser.parse_args()
    asyncio.run(serve(args.max_messages_per_s, args.lifetime_s))


if __name__ == "__main__":
    main()

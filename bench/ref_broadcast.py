"""The reference for bench/fanout.py: a minimal python-websockets server that relays every message of
Freshwire's Redis channel, as is, to every open connection with `websockets.asyncio.server.broadcast()`.

    .venv/bin/python -m bench.ref_broadcast --port 18381 --redis-url redis://127.0.0.1:16679/0

No auth, no subscriptions, no coalescing and no backpressure (broadcast() buffers whatever a slow
connection cannot take yet): the cheapest fan-out python-websockets offers. Text frames it receives
are read and ignored. `GET /healthz` answers 200 once the Redis channel is subscribed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import logging

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

from contract.redis_layout import CHANNEL

log = logging.getLogger(__name__)


async def _hold(ws: ServerConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def run(host: str, port: int, redis_url: str) -> None:
    subscribed = asyncio.Event()

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path != "/healthz":
            return None
        ready = subscribed.is_set()
        return connection.respond(http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE,
                                  "ok\n" if ready else "not subscribed\n")

    redis = aioredis.Redis.from_url(redis_url)
    async with serve(_hold, host, port, process_request=health, compression=None, max_size=65536,
                     ping_interval=20, ping_timeout=20, backlog=4096) as server:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(CHANNEL)
        subscribed.set()
        log.info("reference up on %s:%d, relaying %s", host, port, CHANNEL)
        async for message in pubsub.listen():
            if message.get("type") == "message":
                broadcast(server.connections, message["data"], text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ref_broadcast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18381)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16679/0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.host, args.port, args.redis_url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

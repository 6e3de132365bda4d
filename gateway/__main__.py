"""`python -m gateway` / `freshwire-gateway`: serve the gateway with uvicorn, tuned for many sockets."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

import uvicorn

from gateway import logs
from gateway.app import create_app
from gateway.errors import SettingsError
from gateway.settings import GatewaySettings, load_gateway_settings
from gateway.uvicorn_ws import FreshwireWebSocketProtocol

# uvicorn's sans-I/O websockets protocol (0.35+: no background tasks per connection and a plain
# transport write per frame), extended with the direct write path fan-out uses (gateway/uvicorn_ws.py).
WS_IMPL = FreshwireWebSocketProtocol


def redis_refusal(url: str) -> str | None:
    """Why the version store's Redis cannot keep it (an evicting policy, TTLs); None if it can, if the
    backend is not Redis, or if Redis is not reachable yet (the gateway then retries as usual)."""
    import redis

    from contract.redis_buckets import cluster_nodes
    from contract.redis_health import refusal

    try:
        nodes = cluster_nodes(url)
        if nodes is not None:  # each seed node (the layout's keys live on one of them: TTLs not checked)
            for host, port in nodes:
                with redis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2) as client:
                    if refused := refusal(client, check_ttls=False):
                        return refused
            return None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return None
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return refusal(client)
    except (redis.RedisError, OSError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Freshwire's WebSocket gateway.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    for f in fields(GatewaySettings):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=f"env FRESHWIRE_{f.name.upper()} (default {f.default!r})")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logs.install()
    overrides = {f.name: args[f.name] for f in fields(GatewaySettings) if args[f.name] is not None}
    try:
        settings = load_gateway_settings(overrides)
    except SettingsError as exc:
        print(f"freshwire-gateway: {exc}", file=sys.stderr)
        return 2
    refused = redis_refusal(settings.redis_url)
    if refused:
        print(f"freshwire-gateway: {refused}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=args["host"],
        port=args["port"],
        ws=WS_IMPL,
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=settings.ping_interval_s or None,
        ws_ping_timeout=settings.ping_interval_s or None,
        ws_per_message_deflate=settings.per_message_deflate,
        backlog=4096,
        timeout_graceful_shutdown=5,
        access_log=False,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

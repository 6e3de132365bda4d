"""End-to-end latency: commit (taken by the writer right after COMMIT returns) -> receipt by a
WebSocket client, through real Debezium, Kafka, the consumer, Redis and the gateway.

    .venv/bin/python -m bench.latency [--rates 10,100,1000] [--subscribers 1,100] [--seconds 5]

For each connector configuration (Freshwire's tuned one, and Debezium/Kafka defaults:
poll.interval.ms=500, linger.ms=5), each rate and each number of subscribers per key, a single writer
commits one-row transactions round-robin over 20 keys at the given rate while the subscribers hold
all 20 keys. A received version is matched to its transaction by WAL position (each transaction's
insert LSN, read in the transaction, bounds its commit from below; the next one's, from above).
Prints a table and writes bench/results/latency.json. Loopback only; bounded by --seconds.
Not yet: the per-hop breakdown and the plot that issue #8 asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import websockets

from cdc.versions import lsn_of_text, version_of_lsn
from connectors import register, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from gateway.auth import mint

RESULTS = Path(__file__).parent / "results" / "latency.json"
SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")
KEYS = 20
CONFIGS = {
    "tuned": {},
    "defaults": {"poll.interval.ms": "500", "producer.override.linger.ms": "5"},
}


def configure(s: StackSettings, overrides: dict[str, str]) -> None:
    register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, overrides=overrides)
    time.sleep(2.0)  # let the restarted task settle into streaming


def cards(s: StackSettings) -> list[int]:
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        board = conn.execute("INSERT INTO boards (tenant_id, name) VALUES (1, 'latency') RETURNING id").fetchone()
        assert board is not None
        return [int(conn.execute("INSERT INTO cards (tenant_id, board_id, title) VALUES (1, %s, 'l') RETURNING id",
                                 (board[0],)).fetchone()[0]) for _ in range(KEYS)]  # type: ignore[index]


def write(s: StackSettings, ids: list[int], rate: float, seconds: float, out: list[tuple[str, float]]) -> None:
    """(insert LSN as a version, commit time) per transaction, paced at `rate`."""
    with psycopg.connect(s.app_dsn) as conn:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            row = conn.execute("UPDATE cards SET version = version + 1 WHERE id = %s "
                               "RETURNING pg_current_wal_insert_lsn()::text", (ids[n % KEYS],)).fetchone()
            conn.commit()
            out.append((version_of_lsn(lsn_of_text(str(row[0]))), time.monotonic()))  # type: ignore[index]
            n += 1
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        out.append((version_of_lsn(lsn_of_text(str(row[0]))), float("inf")))  # type: ignore[index]


async def subscriber(url: str, keys: list[str], got: list[tuple[str, float]], ready: asyncio.Event,
                     stop: asyncio.Event) -> None:
    async with websockets.connect(url, max_queue=None) as ws:
        await ws.send(json.dumps({"op": "subscribe", "keys": keys}))
        await ws.recv()
        ready.set()
        while not stop.is_set():
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                continue
            if message.get("type") == "invalidate":
                now = time.monotonic()
                got.extend((v, now) for v in message["keys"].values())


async def arm(s: StackSettings, ids: list[int], rate: float, subs: int, seconds: float) -> dict[str, Any]:
    url = f"ws://{s.host}:{s.gateway_port}/ws?token={mint(SECRET, 'bench', ['card:*'], 3600)}"
    keys = [f"card:{i}" for i in ids]
    got: list[tuple[str, float]] = []
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(subs)]
    tasks = [asyncio.create_task(subscriber(url, keys, got, r, stop)) for r in readies]
    for r in readies:
        await r.wait()
    commits: list[tuple[str, float]] = []
    writer = threading.Thread(target=write, args=(s, ids, rate, seconds, commits))
    writer.start()
    while writer.is_alive():
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*tasks)
    lows = [v for v, _t in commits]
    latencies = []
    for version, received in got:
        i = bisect.bisect_left(lows, version) - 1   # the transaction whose window holds this version
        if 0 <= i < len(commits) - 1:
            latencies.append((received - commits[i][1]) * 1000)
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"rate": rate, "subscribers": subs, "transactions": len(commits) - 1, "received": len(latencies),
            "achieved_tx_per_s": round((len(commits) - 1) / seconds, 1),
            "p50_ms": q[49], "p90_ms": q[89], "p99_ms": q[98], "max_ms": latencies[-1] if latencies else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,100,1000")
    parser.add_argument("--subscribers", default="1,100")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    s = load_stack_settings()
    started = stack.up(s, quiet=True)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()},
                               "settings": vars(args), "arms": []}
    try:
        ids = cards(s)
        for name, overrides in CONFIGS.items():
            configure(s, overrides)
            for rate in (float(r) for r in args.rates.split(",")):
                for subs in (int(n) for n in args.subscribers.split(",")):
                    result = asyncio.run(arm(s, ids, rate, subs, args.seconds))
                    results["arms"].append({"config": name, **result})
                    print(f"{name:<9} {rate:>6.0f} tx/s {subs:>4} subs  p50 {result['p50_ms']:7.1f}  "
                          f"p90 {result['p90_ms']:7.1f}  p99 {result['p99_ms']:7.1f}  max {result['max_ms']:7.1f} ms"
                          f"  ({result['received']} received, {result['achieved_tx_per_s']} tx/s)", flush=True)
    finally:
        configure(s, {})
        stack.down(s, only=started, quiet=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

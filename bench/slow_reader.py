"""A slow reader on each write path (issue #15): does a writer task per connection keep a client that
reads slower than its key changes any fresher than the direct path does, when the gateway has CPU to
spare?

    .venv/bin/python -m bench.slow_reader [--rate 2000] [--seconds 10] [--read-delay-ms 2]

On 127.0.0.1 only, on private ports (Redis 16689, gateway 18390, state in /tmp/fw-slow-reader): a
redis-server (Debian's, through connectors/services) and, one after the other, the real gateway with
`FRESHWIRE_DIRECT_WRITES=0` (a writer task per connection, the default) and `=1` (the direct path).
Each runs once with `FRESHWIRE_UNREAD_BYTES=0` (no budget: what a client has not read is bounded
only by the socket buffers) and once with the default budget (16 KiB, acknowledged by pongs).
For each, one WebSocket client subscribes to one key and reads one frame, then sleeps
`--read-delay-ms` (it is slow, not busy: the machine keeps CPU for the gateway), while this process
releases versions of the key at `--rate`/s for `--seconds` with contract.redis_layout's release
script (bench/fanout.py's Publisher, as the cdc consumer runs it). Per arm: frames read, distinct
versions, each frame's age when read (read time - its release) at p50 / p99 / max, and how long after
the last release the client read the last version (bounded by `--drain-timeout`).

Prints one row per arm and writes bench/results/slow_reader.json. Stops only what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import websockets

from bench.fanout import SECRET, Publisher
from bench.fanout_load import version_in
from bench.report import machine_info, summary, write_json
from connectors import procs, services
from connectors.stack_settings import StackSettings, load_stack_settings
from gateway.auth import mint

KEY = "slow:1"
# (FRESHWIRE_DIRECT_WRITES, FRESHWIRE_UNREAD_BYTES) per arm: each write path with no unread budget,
# then with the default one.
ARMS = {"writer tasks, no budget": ("0", "0"), "direct writes, no budget": ("1", "0"),
        "writer tasks (default)": ("0", ""), "direct writes": ("1", "")}


def release_all(publisher: Publisher, rate: float, seconds: float, stamps: dict[str, float]) -> str:
    """Release versions of KEY at `rate`/s for `seconds`, keeping each version's monotonic release
    time; returns the last version."""
    start, n, last = time.monotonic(), 0, ""
    while time.monotonic() - start < seconds:
        before = time.monotonic()
        last = publisher.release(KEY)
        stamps[last] = before
        n += 1
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return last


async def read_slowly(url: str, delay_s: float, done: threading.Event, final: dict[str, str],
                      drain_timeout_s: float) -> list[tuple[str, float]]:
    """(version, read time) of every frame, until the last release has been read or the drain ends."""
    reads: list[tuple[str, float]] = []
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("freshwire.v1")]) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": [KEY]}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribe refused: {reply}")
        deadline = None
        while True:
            if done.is_set() and deadline is None:
                deadline = time.monotonic() + drain_timeout_s
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                frame = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                if deadline is not None:
                    break
                continue
            version = version_in(frame if isinstance(frame, str) else frame.decode())
            if version is not None:
                reads.append((version, time.monotonic()))
                if done.is_set() and version == final.get("last"):
                    break
            await asyncio.sleep(delay_s)
    return reads


def one_arm(s: StackSettings, direct: str, unread: str, args: argparse.Namespace) -> dict[str, Any]:
    gateway = services.gateway_proc(s, "slow-reader-gateway")
    gateway.env.update({"FRESHWIRE_JWT_SECRET": SECRET, "FRESHWIRE_REDIS_URL": s.redis_url,
                        "FRESHWIRE_DIRECT_WRITES": direct})
    if unread:
        gateway.env["FRESHWIRE_UNREAD_BYTES"] = unread
    procs.start(gateway, s.pids_dir)
    try:
        procs.wait_ready(gateway)
        publisher = Publisher(s.redis_url)
        stamps: dict[str, float] = {}
        final: dict[str, str] = {}
        done = threading.Event()
        url = f"ws://{s.host}:{s.gateway_port}/ws?token={mint(SECRET, 'bench', ['slow:*'], 3600)}"

        def publish() -> None:
            try:
                final["last"] = release_all(publisher, args.rate, args.seconds, stamps)
            finally:
                done.set()

        async def run() -> list[tuple[str, float]]:
            reading = asyncio.create_task(read_slowly(url, args.read_delay_ms / 1000, done, final,
                                                      args.drain_timeout))
            await asyncio.sleep(0.5)  # subscribed before the first release
            threading.Thread(target=publish, name="slow-reader-publisher", daemon=True).start()
            return await reading

        reads = asyncio.run(run())
        return judge(reads, stamps)
    finally:
        procs.stop(gateway.name, s.pids_dir, timeout_s=10)


def judge(reads: list[tuple[str, float]], stamps: dict[str, float]) -> dict[str, Any]:
    """Pure: frames read, distinct versions, frame ages (ms) and the last version's delay after the
    last release."""
    ages = [(t - stamps[v]) * 1000 for v, t in reads if v in stamps]
    last_version = max(stamps) if stamps else ""
    last_read = next((t for v, t in reversed(reads) if v == last_version), None)
    return {"released": len(stamps), "frames": len(reads), "distinct_versions": len({v for v, _t in reads}),
            "age_ms": summary(ages), "got_last_version": last_read is not None,
            "last_after_s": round(last_read - stamps[last_version], 3) if last_read is not None else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="versions released per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--read-delay-ms", type=float, default=2.0, help="the reader's pause after each frame")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--name", default="slow_reader", help="bench/results/<name>.json")
    args = parser.parse_args(argv)
    s = replace(load_stack_settings(), state_dir=Path("/tmp/fw-slow-reader"), redis_port=16689, gateway_port=18390)
    redis_proc = services.redis_proc(s)
    procs.start(redis_proc, s.pids_dir)
    results: dict[str, Any] = {"machine": machine_info(), "settings": vars(args), "arms": {}}
    try:
        procs.wait_ready(redis_proc)
        for name, (direct, unread) in ARMS.items():
            row = results["arms"][name] = one_arm(s, direct, unread, args)
            age = row["age_ms"]
            print(f"{name:26} {row['frames']:6} frames, {row['distinct_versions']:6} versions of "
                  f"{row['released']}; age p50 {age.get('p50', 0):8.1f} p99 {age.get('p99', 0):8.1f} "
                  f"max {age.get('max', 0):8.1f} ms; last version {row['last_after_s']} s after the last release",
                  flush=True)
    finally:
        procs.stop(redis_proc.name, s.pids_dir, timeout_s=10)
    write_json(args.name, results)


if __name__ == "__main__":
    main()

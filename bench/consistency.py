"""Replica-aware release, measured: hold time and await latency at 0 ms and 300 ms replica lag.

    .venv/bin/python -m bench.consistency [--n 200] [--delays 0,300]

Needs the native stack (it starts what is missing, with a replica). For each replica apply delay it
restarts the standby with that delay, swaps in a gated consumer, and commits N one-row transactions,
each followed by an `await` of its write token, while a second connection subscribes to the keys.
Prints a table and writes bench/results/consistency.json. Loopback only; bounded by N and timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import urllib.request
from dataclasses import replace
from typing import Any

import psycopg
import websockets

from bench.report import machine_info, pyplot, save_figure, write_json
from clients.python.tokens import write_token
from connectors import procs, services, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from gateway.auth import mint

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def restart(s: StackSettings, name: str, proc: procs.Proc) -> None:
    procs.stop(name, s.pids_dir)
    procs.start(proc, s.pids_dir)
    procs.wait_ready(proc)


def hold_buckets(s: StackSettings) -> dict[float, float]:
    """Cumulative counts of the consumer's hold-time histogram, by upper bound in seconds."""
    with urllib.request.urlopen(f"http://{s.host}:{s.cdc_metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith("freshwire_cdc_hold_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.split()[1])
    return buckets


def hold_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (ms) of holds observed between two scrapes, interpolated inside its bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] == 0:
        return 0.0
    target, low, prev = q * counts[-1], 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= target:
            if bound == float("inf"):
                return low * 1000
            return (low + (bound - low) * (target - prev) / max(cum - prev, 1e-9)) * 1000
        low, prev = bound, cum
    return low * 1000


async def timed_recv(ws: Any) -> tuple[dict[str, Any], float]:
    message = json.loads(await asyncio.wait_for(ws.recv(), 15))
    return message, time.monotonic()


async def run_arm(s: StackSettings, n: int) -> dict[str, Any]:
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        board = conn.execute("INSERT INTO boards (tenant_id, name) VALUES (1, 'bench') RETURNING id").fetchone()
        assert board is not None
        card = conn.execute("INSERT INTO cards (tenant_id, board_id, title) VALUES (1, %s, 'b') RETURNING id",
                            (board[0],)).fetchone()
        assert card is not None
    key = f"card:{card[0]}"
    jwt = mint(SECRET, "bench", ["card:*"], 3600)
    url = f"ws://{s.host}:{s.gateway_port}/ws?token={jwt}"
    commit_to_visible, commit_to_invalidate, release_to_visible = [], [], []
    async with websockets.connect(url) as awaiter, websockets.connect(url) as watcher:
        await watcher.send(json.dumps({"op": "subscribe", "id": 1, "keys": [key]}))
        json.loads(await watcher.recv())
        await asyncio.sleep(1.0)  # let the insert's own invalidation pass
        while True:
            try:
                await asyncio.wait_for(watcher.recv(), 0.2)
            except TimeoutError:
                break
        h0 = hold_buckets(s)
        with psycopg.connect(s.app_dsn) as conn:
            for i in range(n):
                conn.execute("UPDATE cards SET version = version + 1 WHERE id = %s", (card[0],))
                tok = write_token(conn)
                conn.commit()
                t_commit = time.monotonic()
                await awaiter.send(json.dumps({"op": "await", "id": i, "token": tok, "timeout_ms": 10000}))
                (reply, t_visible), (inv, t_inv) = await asyncio.gather(timed_recv(awaiter), timed_recv(watcher))
                assert reply["type"] == "visible" and inv["keys"][key] == reply["version"], (inv, reply)
                commit_to_visible.append((t_visible - t_commit) * 1000)
                commit_to_invalidate.append((t_inv - t_commit) * 1000)
                # the invalidation reaching a subscriber marks the release; the visible reply follows it
                release_to_visible.append((t_visible - t_inv) * 1000)
        h1 = hold_buckets(s)
    return {
        "transactions": n,
        "commit_to_visible_ms": {"p50": pct(commit_to_visible, 50), "p99": pct(commit_to_visible, 99)},
        "commit_to_invalidate_ms": {"p50": pct(commit_to_invalidate, 50), "p99": pct(commit_to_invalidate, 99)},
        "release_to_visible_ms": {"p50": pct(release_to_visible, 50), "p99": pct(release_to_visible, 99)},
        "hold_ms": {"p50": hold_quantile(h0, h1, 0.50), "p99": hold_quantile(h0, h1, 0.99)},
        "held_batches": h1.get(float("inf"), 0.0) - h0.get(float("inf"), 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--delays", default="0,300", help="replica apply delays in ms")
    args = parser.parse_args()
    os.environ.setdefault("FRESHWIRE_REPLICA", "1")
    s = load_stack_settings()
    started = stack.up(s, quiet=True)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"replica_poll_ms": 5, "n": args.n},
        "arms": {},
    }
    try:
        baseline = replace(s, release_gating=False)
        restart(s, "cdc", services.cdc_proc(baseline))
        results["arms"]["no replica gating"] = asyncio.run(run_arm(s, args.n))
        for delay in (int(d) for d in args.delays.split(",")):
            arm = replace(s, replica_delay_ms=delay, release_gating=True)
            restart(s, "replica", services.replica_proc(arm))
            restart(s, "cdc", services.cdc_proc(arm))
            results["arms"][f"gated, replica delay {delay} ms"] = asyncio.run(run_arm(s, args.n))
    finally:
        restart(s, "replica", services.replica_proc(s))
        restart(s, "cdc", services.cdc_proc(s))
        stack.down(s, only=started, quiet=True)
    write_json("consistency", results)
    plot(results["arms"])
    print(f"{'arm':<32} {'commit->invalidate':>20} {'commit->visible':>20} {'release->visible':>20} "
          f"{'hold':>20}")
    print(f"{'':<32} {'p50 / p99 ms':>20} {'p50 / p99 ms':>20} {'p50 / p99 ms':>20} {'p50 / p99 ms':>20}")
    for name, r in results["arms"].items():
        cells = [f"{r[m]['p50']:.1f} / {r[m]['p99']:.1f}"
                 for m in ("commit_to_invalidate_ms", "commit_to_visible_ms", "release_to_visible_ms", "hold_ms")]
        print(f"{name:<32} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20} {cells[3]:>20}")


def plot(arms: dict[str, dict[str, Any]]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    metrics = ("commit_to_invalidate_ms", "commit_to_visible_ms", "hold_ms")
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        xs = [j + i * width for j in range(len(arms))]
        ax.bar(xs, [a[metric]["p50"] for a in arms.values()], width, label=f"{metric[:-3]} p50")
        ax.scatter(xs, [a[metric]["p99"] for a in arms.values()], marker="_", s=200, color="black")
    ax.set_xticks([j + width for j in range(len(arms))], list(arms), fontsize=8)
    ax.set_ylabel("ms (bars p50, dashes p99)")
    ax.set_title("read-your-writes: commit → visible, with and without replica gating")
    ax.legend(fontsize=7)
    save_figure(fig, "consistency")


if __name__ == "__main__":
    main()

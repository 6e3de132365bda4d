"""End-to-end latency: commit (taken by the writer right after COMMIT returns) -> receipt by a
WebSocket client, through real Debezium, Kafka, the consumer, Redis and the gateway, with the time
broken down per hop.

    .venv/bin/python -m bench.latency [--rates 10,100,1000] [--subscribers 1,100] [--seconds 8] [--client-queue 16]
                                      [--configs tuned,defaults,tuned-fsync-always]
                                      [--set poll.interval.ms=20 ...] [--name latency]

For each configuration (Freshwire's tuned one; Debezium/Kafka defaults: poll.interval.ms=500,
linger.ms=5; and tuned with Redis appendfsync always instead of everysec), each rate and each
number of subscribers per key, writers (one connection per 250 tx/s) commit one-row transactions
round-robin over 20 cards at the given rate, recording each transaction's id and the wall-clock
time right after COMMIT returns. The subscribers (all on the 20 keys) run in a separate process.
Each transaction is followed by its id:

    commit (writer) -> Kafka record timestamp (Connect's producer, ms) -> consumer receipt (poll
    returned) -> publish call (Lua release script) -> the pubsub message reaching a Redis subscriber
    (this script's own, next to the gateway's: it stands for the gateway's receipt) -> client receipt

The Kafka timestamp, consumer receipt and publish call travel in the pubsub message (`h`, see
cdc/redis_layout.py); the message also carries the transaction id and its version, which the clients
receive. All clocks are this machine's wall clock. Prints a table, each arm that has a target (issue
#15: 1k tx/s x 1 subscriber p50 <= 8 ms and p99 <= 40 ms; 1k tx/s x 100 subscribers p99 <= 100 ms)
with the target beside its figures, and writes bench/results/<name>.json (targets in it) and
<name>.png. `--set key=value` overrides a connector setting in every configuration (to compare a knob
back to back). Loopback only; bounded by --seconds per arm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import psycopg
import redis
import websockets

from bench import procfs, sched
from bench.report import machine_info, pyplot, rate_list, save_figure, summary, write_json
from connectors import register, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from contract.redis_layout import CHANNEL, decode_published
from gateway.auth import mint

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")
KEYS = 20
TX_PER_WRITER = 250
DRAIN_S = 2.0
CLIENT_QUEUE = 16  # frames; the websockets library's default (see clients_process)
SETTLE_TIMEOUT_S = 30.0
PROBE_SQL = "UPDATE cards SET version = version + 1 WHERE id = %s RETURNING txid_current()::text"
# name -> (connector overrides, Redis appendfsync). Redis' fsync is on the publish path: "everysec"
# (Freshwire's default) vs "always" (an acknowledged version also survives a machine crash).
CONFIGS: dict[str, tuple[dict[str, str], str]] = {
    "tuned": ({}, "everysec"),
    "defaults": ({"poll.interval.ms": "500", "producer.override.linger.ms": "5"}, "everysec"),
    "tuned-fsync-always": ({}, "always"),
}
# (rate, subscribers per key) -> end-to-end percentile -> bound in ms (issue #15)
TARGETS: dict[tuple[float, int], dict[str, float]] = {
    (1000.0, 1): {"p50": 8.0, "p99": 40.0},
    (1000.0, 100): {"p99": 100.0},
}
WARM_STEP_S = 10.0
WARM_MAX_S = 300.0
JIT_QUIET_PCT = 3.0  # Kafka's and Connect's JIT compiler threads together, % of one core
HOPS = ("commit→kafka", "kafka→consumer", "consumer→publish", "publish→redis sub", "redis→client")


def configure(s: StackSettings, config: tuple[dict[str, str], str], ids: list[int], warmup_rate: float,
              warmup_s: float) -> dict[str, Any]:
    """Apply the connector settings, wait until a probe transaction comes through end to end (the
    restarted task streams again), warm the JVMs up (warm_up), and wait for the probe again (backlog
    gone). Returns what the warm-up took."""
    overrides, fsync = config
    register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, overrides=overrides)
    with redis.Redis.from_url(s.redis_url) as client:
        client.config_set("appendfsync", fsync)
    probe(s, ids[0])
    warmed: dict[str, Any] = {}
    if warmup_s > 0:
        warmed = warm_up(s, ids, warmup_rate, warmup_s)
        probe(s, ids[0])
    return warmed


def warm_up(s: StackSettings, ids: list[int], rate: float, at_least_s: float) -> dict[str, Any]:
    """Writes at `rate` for `at_least_s`, then on in WARM_STEP_S steps until the JVMs' JIT compilers
    (Kafka's and Connect's C1/C2 threads) used under JIT_QUIET_PCT of a core over a step, or WARM_MAX_S
    in all. A JVM compiles for minutes after it starts or meets new load: 15 s of warm-up measured
    1k tx/s at p50 28 ms with C2 at 17-20 % of a core in each JVM, against 10.7 ms once it was done.
    A deployment's JVMs have long finished compiling: that is the state to measure."""
    jvms = {r: pid for r, pid in stack.running_parts(s).items() if r in procfs.JVM_ROLES}
    write_all(s, ids, rate, at_least_s, {})
    waited, jit = at_least_s, None  # None: no step measured (no JVM found, or --warmup past WARM_MAX_S)
    while jvms and waited < WARM_MAX_S:
        before, t0 = {r: procfs.thread_ticks(p) for r, p in jvms.items()}, time.monotonic()
        write_all(s, ids, rate, WARM_STEP_S, {})
        wall = time.monotonic() - t0
        waited += wall
        jit = sum(procfs.jit_share(before[r], procfs.thread_ticks(p), wall) for r, p in jvms.items())
        if jit < JIT_QUIET_PCT:
            break
    compiling = "not measured" if jit is None else f"{jit:.1f} % of a core over the last {WARM_STEP_S:.0f} s"
    print(f"warm-up: {waited:.0f} s at {rate:.0f} tx/s, JIT compilers {compiling}", flush=True)
    return {"seconds": round(waited), "rate": rate, "jit_pct_of_core_last_step": None if jit is None else round(jit, 2),
            "quiet": jit is not None and jit < JIT_QUIET_PCT}


def probe(s: StackSettings, card: int) -> None:
    """Commit one update and wait for its pubsub message."""
    client = redis.Redis.from_url(s.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL)
    try:
        for _attempt in range(3):
            with psycopg.connect(s.app_dsn, autocommit=True) as conn:
                row = conn.execute(PROBE_SQL, (card,)).fetchone()
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while time.monotonic() < deadline:
                msg = pubsub.get_message(timeout=0.5)
                if msg is not None and decode_published(msg["data"]).tx_id == str(row[0]):  # type: ignore[index]
                    time.sleep(1.0)
                    return
        raise RuntimeError(f"no probe transaction came through within {SETTLE_TIMEOUT_S} s after reconfiguring")
    finally:
        pubsub.close()
        client.close()


def cards(s: StackSettings) -> list[int]:
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        board = conn.execute("INSERT INTO boards (tenant_id, name) VALUES (1, 'latency') RETURNING id").fetchone()
        assert board is not None
        return [int(conn.execute("INSERT INTO cards (tenant_id, board_id, title) VALUES (1, %s, 'l') RETURNING id",
                                 (board[0],)).fetchone()[0]) for _ in range(KEYS)]  # type: ignore[index]


def paced(rate: float, seconds: float) -> Iterator[int]:
    """0, 1, 2, ... at `rate` per second (never ahead of schedule) for `seconds`."""
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        yield n
        n += 1
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def write(s: StackSettings, ids: list[int], rate: float, seconds: float, out: dict[str, float]) -> None:
    """Commit one-row transactions paced at `rate`; out[xid] = wall-clock ms right after COMMIT."""
    with psycopg.connect(s.app_dsn) as conn:
        for n in paced(rate, seconds):
            row = conn.execute(PROBE_SQL, (ids[n % len(ids)],)).fetchone()
            conn.commit()
            out[str(row[0])] = time.time() * 1000  # type: ignore[index]


def writers_for(rate: float) -> int:
    return max(1, math.ceil(rate / TX_PER_WRITER))


def write_all(s: StackSettings, ids: list[int], rate: float, seconds: float, out: dict[str, float]) -> None:
    """`rate` split over one connection per TX_PER_WRITER tx/s, each on its own cards."""
    n = writers_for(rate)
    threads = [threading.Thread(target=write, args=(s, ids[w::n], rate / n, seconds, out)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def listen(url: str, ready: threading.Event, stop: threading.Event, out: dict[str, tuple[str, tuple[float, ...], float]]
           ) -> None:
    """out[xid] = (version, hops carried, wall-clock ms the pubsub message arrived here)."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL)
    ready.set()
    try:
        while not stop.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if msg is None:
                continue
            now = time.time() * 1000
            published = decode_published(msg["data"])
            if published.tx_id:
                out[published.tx_id] = (published.version, published.hops, now)
    finally:
        pubsub.close()
        client.close()


def clients_process(url: str, keys: list[str], subs: int, ready: MpEvent, stop: MpEvent, results: Any,
                    max_queue: int | None = CLIENT_QUEUE) -> None:
    """Runs in its own process: `subs` connections on all keys; sends [(version, receipt ms)] back.

    `max_queue` is the websockets library's: with a number, the library stops reading a connection's
    socket once that many frames wait for this code, so a ping is answered only after the frames before
    it were taken (the gateway's unread budget then holds that connection and coalesces its changes);
    None reads and answers ahead without bound, holding the backlog in this process."""
    got: list[tuple[str, float]] = []

    async def one(opened: asyncio.Event) -> None:
        async with websockets.connect(url, max_queue=max_queue) as ws:
            await ws.send(json.dumps({"op": "subscribe", "keys": keys}))
            await ws.recv()
            opened.set()
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "invalidate":
                    now = time.time() * 1000
                    got.extend((v, now) for v in message["keys"].values())

    async def main() -> None:
        opened = [asyncio.Event() for _ in range(subs)]
        tasks = [asyncio.create_task(one(o)) for o in opened]
        for o in opened:
            await o.wait()
        ready.set()
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome  # the connection failed: the arm's figures would be wrong
            if outcome is None:  # `async for` ended: the gateway closed it normally before the stop
                raise RuntimeError("a client connection closed before the arm ended")

    asyncio.run(main())
    results.put(got)


def breakdown(commits: dict[str, float], published: dict[str, tuple[str, tuple[float, ...], float]],
              receipts: list[tuple[str, float]]) -> dict[str, Any]:
    """Pure: join commit times, pubsub messages and client receipts by transaction id / version."""
    by_version = {version: (xid, hops, arrived) for xid, (version, hops, arrived) in published.items()}
    e2e: list[float] = []
    hop_samples: dict[str, list[float]] = {h: [] for h in HOPS}
    for version, received in receipts:
        entry = by_version.get(version)
        if entry is None or entry[0] not in commits:
            continue
        xid, hops, arrived = entry
        committed = commits[xid]
        e2e.append(received - committed)
        hop_samples["redis→client"].append(received - arrived)
    for xid, (_version, hops, arrived) in published.items():
        if xid not in commits or len(hops) != 3:
            continue
        kafka_ts, consumed, publish = hops
        hop_samples["commit→kafka"].append(kafka_ts - commits[xid])
        hop_samples["kafka→consumer"].append(consumed - kafka_ts)
        hop_samples["consumer→publish"].append(publish - consumed)
        hop_samples["publish→redis sub"].append(arrived - publish)
    return {"end_to_end_ms": summary(e2e), "hops_ms": {h: summary(v) for h, v in hop_samples.items()}}


@dataclass
class Observation:
    """What one load phase left: pubsub messages by transaction id, and every client receipt."""

    published: dict[str, tuple[str, tuple[float, ...], float]] = field(default_factory=dict)
    receipts: list[tuple[str, float]] = field(default_factory=list)
    clients_pid: int | None = None


@contextmanager
def observe(s: StackSettings, keys: list[str], subs: int,
            max_queue: int | None = CLIENT_QUEUE) -> Iterator[Observation]:
    """Clients (their own process, `subs` connections on `keys`) and a Redis subscriber listen while
    the body writes; on exit they drain for DRAIN_S and the receipts are collected."""
    url = f"ws://{s.host}:{s.gateway_port}/ws?token={mint(SECRET, 'bench', ['card:*'], 3600)}"
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    clients = ctx.Process(target=clients_process, args=(url, keys, subs, ready, stop, results, max_queue))
    clients.start()
    seen = Observation(clients_pid=clients.pid)
    listening, stop_listening = threading.Event(), threading.Event()
    listener = threading.Thread(target=listen, args=(s.redis_url, listening, stop_listening, seen.published))
    listener.start()
    try:
        if not ready.wait(60) or not listening.wait(10):
            raise RuntimeError("subscribers did not connect")
        yield seen
        time.sleep(DRAIN_S)
        stop.set()
        seen.receipts = results.get(timeout=60)
    finally:
        stop.set()
        stop_listening.set()
        listener.join(5)
        clients.join(30)
        if clients.is_alive():
            clients.kill()


def census_during(s: StackSettings, seen: Observation, seconds: float, out: dict[str, Any]) -> threading.Thread:
    """A thread taking bench/sched.py's census over the middle of a `seconds` long write phase (both
    snapshots while the writers run: a thread that has exited no longer counts): every part of the
    stack, the bench's writers (this process) and its WebSocket clients, and the machine's stall time."""
    roles = {**stack.running_parts(s), "bench writers": os.getpid()}
    if seen.clients_pid is not None:
        roles["bench clients"] = seen.clients_pid
    margin = min(1.0, seconds / 4)
    alone = frozenset({"bench writers"})  # this process, without the clients' child process

    def take() -> None:
        time.sleep(margin)
        stall0, before, t0 = sched.pressure(), sched.snapshot(roles, alone), time.monotonic()
        time.sleep(seconds - 2 * margin)
        out.update(sched.split(before, sched.snapshot(roles, alone), time.monotonic() - t0))
        out["stall_ms"] = sched.stalls(stall0, sched.pressure())

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


def arm(s: StackSettings, ids: list[int], rate: float, subs: int, seconds: float,
        max_queue: int | None = CLIENT_QUEUE) -> dict[str, Any]:
    commits: dict[str, float] = {}
    census: dict[str, Any] = {}
    with observe(s, [f"card:{i}" for i in ids], subs, max_queue) as seen:
        taking = census_during(s, seen, seconds, census)
        write_all(s, ids, rate, seconds, commits)
        taking.join()
    result = breakdown(commits, seen.published, seen.receipts)
    return {"rate": rate, "subscribers": subs, "writers": writers_for(rate), "transactions": len(commits),
            "achieved_tx_per_s": round(len(commits) / seconds, 1), **result, "cpu": census}


def target_check(rate: float, subs: int, e2e: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Pure: each targeted percentile of an arm -> {"target_ms", "ms", "met"}; {} for an arm without targets."""
    return {p: {"target_ms": bound, "ms": e2e[p], "met": e2e["count"] > 0 and e2e[p] <= bound}
            for p, bound in TARGETS.get((float(rate), subs), {}).items()}


def targets_text(checks: dict[str, dict[str, Any]]) -> str:
    return "  ".join(f"[{p} {c['ms']:.1f} ms, target <= {c['target_ms']:g}: {'met' if c['met'] else 'missed'}]"
                     for p, c in checks.items())


def plot(arms: list[dict[str, Any]], name: str = "latency") -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    cases = list(dict.fromkeys((a["rate"], a["subscribers"]) for a in arms))
    configs = list(dict.fromkeys(a["config"] for a in arms))
    for c, config in enumerate(configs):
        mine = {(a["rate"], a["subscribers"]): a for a in arms if a["config"] == config}
        xs = [i + (c - (len(configs) - 1) / 2) * 0.2 for i, case in enumerate(cases) if case in mine]
        color = f"C{c}"
        left.plot(xs, [mine[k]["end_to_end_ms"]["p50"] for k in cases if k in mine], "o", color=color,
                  label=f"{config} p50")
        left.plot(xs, [mine[k]["end_to_end_ms"]["p99"] for k in cases if k in mine], "^", color=color,
                  label=f"{config} p99", alpha=0.6)
    left.set_yscale("log")
    left.set_xticks(range(len(cases)), [f"{r:.0f} tx/s\n×{n} subs" for r, n in cases], fontsize=7)
    left.set_ylabel("commit → client (ms, log)")
    left.axhline(8, color="green", linewidth=0.8, linestyle="--", label="1k×1 target p50 8 ms")
    left.axhline(40, color="red", linewidth=0.8, linestyle="--", label="1k×1 target p99 40 ms")
    left.axhline(100, color="purple", linewidth=0.8, linestyle=":", label="1k×100 target p99 100 ms")
    left.legend(fontsize=6, ncol=2)
    left.set_title("end-to-end latency (circles p50, triangles p99)")
    tuned = [a for a in arms if a["config"] == "tuned"]
    bottom = [0.0] * len(tuned)
    for hop in HOPS:
        values = [max(0.0, a["hops_ms"][hop]["p50"]) for a in tuned]
        right.bar(range(len(tuned)), values, bottom=bottom, label=hop)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_xticks(range(len(tuned)), [f"{a['rate']:.0f}/s×{a['subscribers']}" for a in tuned], fontsize=7)
    right.set_ylabel("p50 per hop (ms)")
    right.set_title("tuned: where the time goes (p50 of each hop)")
    right.legend(fontsize=7)
    save_figure(fig, name)


def row(name: str, a: dict[str, Any]) -> str:
    e, h = a["end_to_end_ms"], a["hops_ms"]
    hops = " ".join(f"{h[k]['p50']:6.1f}" for k in HOPS)
    return (f"{name:<9} {a['rate']:>5.0f}/s {a['subscribers']:>4} subs  p50 {e['p50']:7.1f} p90 {e['p90']:7.1f} "
            f"p99 {e['p99']:7.1f} max {e['max']:7.1f} ms | hops p50 {hops} | {a['achieved_tx_per_s']} tx/s"
            + (f"\n          {targets_text(a['targets'])}" if a.get("targets") else "")
            + (f"\n          {sched.text(a['cpu'])}" if a.get("cpu") else ""))


def main(argv: list[str] | None = None, run_arm: Callable[..., dict[str, Any]] = arm) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=rate_list, default=rate_list("10,100,1000"), help="tx/s, comma-separated")
    parser.add_argument("--subscribers", default="1,100")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds of load at the highest rate first, then on until the JVMs stop compiling "
                             "(WARM_MAX_S at most)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a connector setting for every configuration (repeatable)")
    parser.add_argument("--client-queue", type=int, default=CLIENT_QUEUE,
                        help="the clients' websockets max_queue in frames; 0: unbounded (the bench before "
                             "2026-12-03), the library then reads and answers pings ahead of the code")
    parser.add_argument("--name", default="latency", help="bench/results/<name>.json and .png")
    args = parser.parse_args(argv)
    if args.client_queue < 0:
        parser.error("--client-queue must be 0 (unbounded) or a number of frames")
    max_queue = args.client_queue or None
    extra = dict(kv.split("=", 1) for kv in args.set)
    s = load_stack_settings()
    started = stack.up(s, quiet=True)
    results: dict[str, Any] = {"machine": machine_info(), "settings": vars(args), "hops": list(HOPS), "arms": [],
                               "targets": [{"rate": r, "subscribers": n, "end_to_end_ms": t}
                                           for (r, n), t in TARGETS.items()]}
    print(f"hops: {' | '.join(HOPS)}", flush=True)
    ids = cards(s)
    rates: list[float] = args.rates
    try:
        for name in args.configs.split(","):
            overrides, fsync = CONFIGS[name]
            results.setdefault("warmup", {})[name] = configure(s, ({**overrides, **extra}, fsync), ids,
                                                               max(rates), args.warmup)
            for rate in rates:
                for subs in (int(n) for n in args.subscribers.split(",")):
                    result = {"config": name, **run_arm(s, ids, rate, subs, args.seconds, max_queue)}
                    result["targets"] = target_check(rate, subs, result["end_to_end_ms"])
                    results["arms"].append(result)
                    print(row(name, result), flush=True)
    finally:
        configure(s, ({}, s.redis_fsync), ids, 0, 0)
        stack.down(s, only=started, quiet=True)
    write_json(args.name, results)
    plot(results["arms"], args.name)


if __name__ == "__main__":
    main()

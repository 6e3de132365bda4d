"""Faults on the cluster topology (#12): one member of each tier SIGKILLed, one at a time, while a writer
runs transactions and clients spread over the gateways through HAProxy hold subscriptions.

The members killed, in order: the broker leading `freshwire.cdc`, the Connect worker running the
Debezium task, the Redis master serving the control slot, the active cdc consumer, and the gateway
holding the most connections. For each it measures the recovery time: from the kill until every client
has received a change committed after the kill (a probe row per tenant, written every PROBE_S). The
killed member is then started again (a Redis master comes back as a replica) before the next fault.

At the end it checks what the chaos harness checks (bench/chaos.py), against the database's own WAL
positions: every client ends at the version of the last transaction that touched each key, versions
strictly increase per key per client (nothing twice), no client received another tenant's key, and
every part is running and ready. With a replica, every batch a client takes is checked against the
replica at that moment: it must already have replayed past the batch's newest version (never a stale
read; one `pg_last_wal_replay_lsn()` query whenever a batch is newer than the last replay seen).

    FRESHWIRE_TOPOLOGY=cluster .venv/bin/python -m connectors.stack up --detach
    FRESHWIRE_TOPOLOGY=cluster .venv/bin/python -m bench.cluster_faults [--rate 40] [--results DIR]

Prints a table, writes <results>/cluster_faults.json, exits 1 on any violation. Loopback only; bounded
by --timeout per recovery and the fixed list of faults.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis

from bench.chaos import (
    SECRET,
    TENANTS,
    Writer,
    client_task,
    ensure_connector,
    item_key,
    missing_keys,
    received_violations,
    universe,
)
from clients.python.client import Batch, Client
from connectors import cluster, procs, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from contract import topics
from contract.versions import lsn_of_text, version_of_lsn
from gateway.auth import mint

RESULTS = Path(__file__).parent / "results"
FAULTS = ("broker", "connect", "redis", "cdc", "gateway")
TARGETS_S = {"broker": 5.0, "connect": 15.0, "redis": 6.0, "cdc": 8.0, "gateway": 2.0}  # the targets
PROBE_S = 0.1      # a probe row per tenant is updated this often
STEADY_S = 3.0     # calm before each fault
# tenant_of(id) gives the tenant; outside the writer's ids and bulks; parent 0 is outside its parents
PROBE_ID = {1: 9_000_002, 2: 9_000_001}
ITEMS = 40


def probe_key(tenant: int) -> str:
    return item_key(PROBE_ID[tenant])


@dataclass
class Probe:
    """Updates one row per tenant every PROBE_S, remembering each write's WAL window and start time."""

    dsn: str
    writes: list[tuple[float, int, str, str]] = field(default_factory=list)  # (started, tenant, inside, after)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=False) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                for tenant in TENANTS:
                    started = time.monotonic()
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO chaos_items VALUES (%s, %s, 0, %s) ON CONFLICT (id) DO UPDATE "
                                    "SET val = EXCLUDED.val", (PROBE_ID[tenant], tenant, f"p{n}"))
                        inside = cur.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    conn.commit()
                    after = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                    assert inside is not None and after is not None
                    self.writes.append((started, tenant, _version(inside[0]), _version(after[0])))
                time.sleep(PROBE_S)

    def first_after(self, t0: float, tenant: int) -> str | None:
        """The WAL position just before the first probe write of `tenant` started after t0: a client
        holding a version above it has received a change committed after t0."""
        return next((inside for started, t, inside, _after in self.writes if started > t0 and t == tenant), None)


@dataclass
class ReplicaCheck:
    """Re-reads from the replica the moment a client takes a batch: the replica must already have
    replayed past every version in it (docs/consistency.md, guarantee 1). Replay only moves forward, so
    a batch at or below a position already seen needs no query. One connection per client."""

    dsn: str
    replay: str = ""                  # the highest replay position read so far, as a version
    rereads: int = 0                  # replica queries made
    batches: int = 0                  # batches checked
    stale: list[str] = field(default_factory=list)
    conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)

    async def hooks(self, n: int) -> list[Callable[[dict[str, str]], Awaitable[None]]]:
        """`n` batch hooks, one per client, each on a connection of its own."""
        self.conns = [await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) for _ in range(n)]
        return [functools.partial(self.check, conn) for conn in self.conns]

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    async def check(self, conn: psycopg.AsyncConnection[Any], batch: dict[str, str]) -> None:
        newest = max(batch.values(), default="")
        self.batches += 1
        if newest <= self.replay:
            return
        cur = await conn.execute("SELECT pg_last_wal_replay_lsn()::text")
        row = await cur.fetchone()
        self.rereads += 1
        replay = _version(row[0]) if row is not None and row[0] is not None else ""
        self.replay = max(self.replay, replay)
        if replay < newest:
            key = max(batch, key=lambda k: batch[k])
            self.stale.append(f"replica replayed to {replay} when {key} at {newest} arrived")


def _version(lsn: object) -> str:
    return version_of_lsn(lsn_of_text(str(lsn)))


# ---------------------------------------------------------------- who to kill

def _kafka_leader(s: StackSettings) -> str:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": s.kafka_bootstrap}).list_topics(topics.CHANGES, timeout=10)
    leader = meta.topics[topics.CHANGES].partitions[0].leader
    return cluster.KAFKA[leader - 1]  # node ids are 1..n, in the order of KAFKA


def _task_worker(s: StackSettings) -> str:
    with urllib.request.urlopen(f"{s.connect_url}/connectors/freshwire-postgres/status", timeout=10) as r:
        worker = json.load(r)["tasks"][0]["worker_id"]
    return cluster.CONNECT[s.cluster.connect_ports.index(int(worker.rsplit(":", 1)[1]))]


def _control_master(s: StackSettings) -> str:
    for port in s.cluster.redis_ports:
        try:
            client = redis.Redis(host=s.host, port=port, socket_timeout=2)
            slot = int(client.execute_command("CLUSTER KEYSLOT", "{fw}:watermark"))  # type: ignore[no-untyped-call]
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):  # type: ignore[no-untyped-call]
                if int(start) <= slot <= int(end):
                    return cluster.REDIS[s.cluster.redis_ports.index(int(master[1]))]
        except redis.RedisError:
            continue
    raise RuntimeError("no Redis node answered CLUSTER SLOTS")


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _active_cdc(s: StackSettings) -> str:
    for name, url in zip(cluster.CDC, s.cluster.cdc_metrics_urls, strict=True):
        if _metric(url, "freshwire_cdc_assigned_partitions") > 0:
            return name
    raise RuntimeError("no cdc process holds the input partition")


def _busiest_gateway(s: StackSettings) -> str:
    counts = {name: _metric(url, "freshwire_gateway_connections")
              for name, url in zip(cluster.GATEWAY, s.cluster.gateway_urls, strict=True)}
    return max(counts, key=lambda n: counts[n])


TARGET = {"broker": _kafka_leader, "connect": _task_worker, "redis": _control_master, "cdc": _active_cdc,
          "gateway": _busiest_gateway}


def kill(s: StackSettings, name: str) -> None:
    port = next(p for p in cluster.parts(s) if p.name == name).build(s).port
    if not procs.kill(name, s.pids_dir, port=port):  # gone, its port free: restartable at once
        raise RuntimeError(f"{name} is not running before its fault")


def restart(s: StackSettings, name: str) -> None:
    part = next(p for p in cluster.parts(s) if p.name == name)
    proc = part.build(s)
    procs.start(proc, s.pids_dir)
    procs.wait_ready(proc)
    if name in cluster.KAFKA or name in cluster.CONNECT:
        ensure_connector(s)


# ---------------------------------------------------------------- the run

async def _recovered(clients: list[tuple[int, str, Client]], probe: Probe, t0: float, timeout_s: float) -> float | None:
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        if all((floor := probe.first_after(t0, tenant)) is not None
               and (c.versions.get(probe_key(tenant)) or "") > floor for tenant, _b, c in clients):
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    return None


async def run(s: StackSettings, rate: float, seed: int, timeout_s: float,
              faults: tuple[str, ...] = FAULTS) -> dict[str, Any]:
    rng = random.Random(seed)
    tokens = {t: mint(SECRET, f"faults-{t}", [f"chaos:{t}:*"], 7200) for t in TENANTS}
    clients: list[tuple[int, str, Client]] = []
    for n in range(6):
        tenant = TENANTS[n % 2]
        c = Client(s.cluster.haproxy_ws_url, token=tokens[tenant], record=True, max_backoff_s=0.5)
        await c.start()
        await c.subscribe([*universe(ITEMS, tenant), probe_key(tenant)])
        clients.append((tenant, ("steady", "slow")[n % 2], c))
    stop = asyncio.Event()
    replica = ReplicaCheck(s.replica_dsn) if s.with_replica else None
    hooks: list[Callable[[Batch], Awaitable[None]] | None] = [None] * len(clients)
    if replica is not None:
        hooks = [*await replica.hooks(len(clients))]
    tasks = [asyncio.create_task(client_task(c, b, rng, stop, hook))
             for (_t, b, c), hook in zip(clients, hooks, strict=True)]
    probe = Probe(s.app_dsn)
    writer = Writer(s, random.Random(seed + 1), ITEMS, size=10**6)
    writer_thread = threading.Thread(target=writer.run, name="faults-writer")
    probe_thread = threading.Thread(target=probe.run, name="faults-probe")
    writer_thread.start()
    await asyncio.sleep(1.0)  # the writer truncates the table first
    probe_thread.start()
    started = time.monotonic()
    loop = asyncio.get_running_loop()

    async def pace() -> None:  # the writer may run `rate` transactions a second
        while not stop.is_set():
            writer.allowed = int((time.monotonic() - started) * rate)
            await asyncio.sleep(0.05)

    pacer = asyncio.create_task(pace())
    recoveries: dict[str, dict[str, Any]] = {}
    for fault in faults:
        await asyncio.sleep(STEADY_S)
        name = await loop.run_in_executor(None, TARGET[fault], s)
        t0 = time.monotonic()
        await loop.run_in_executor(None, kill, s, name)
        took = await _recovered(clients, probe, t0, timeout_s)
        recoveries[fault] = {"killed": name, "recovery_s": None if took is None else round(took, 2),
                             "target_s": TARGETS_S[fault]}
        print(f"  {time.monotonic() - started:6.1f}s {fault:<8} {name:<9} deliveries back in "
              f"{'never' if took is None else f'{took:5.2f}s'} (target {TARGETS_S[fault]:.0f}s)", end="", flush=True)
        t1 = time.monotonic()
        await loop.run_in_executor(None, restart, s, name)
        recoveries[fault]["restart_s"] = round(time.monotonic() - t1, 2)
        print(f", restarted in {recoveries[fault]['restart_s']:5.2f}s", flush=True)
    stop.set()
    writer.stop.set()
    probe.stop.set()
    pacer.cancel()
    await asyncio.to_thread(writer_thread.join, 30)
    await asyncio.to_thread(probe_thread.join, 30)

    def lost() -> list[tuple[str, str, str]]:
        return missing_keys(clients, ITEMS, writer.window)

    settle = time.monotonic()
    deadline = settle + timeout_s
    while lost() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    print(f"  {time.monotonic() - started:6.1f}s settled in {time.monotonic() - settle:.2f}s after {writer.done} "
          "transactions", flush=True)
    violations = [f"lost: {who} {key} at {got}" for who, key, got in lost()[:20]]
    found, checked = received_violations(clients)
    violations += found
    for _t, _b, c in clients:
        await c.close()
    if replica is not None:
        await replica.close()
        violations += replica.stale
    violations += [f"recovery: {f} never resumed" for f, r in recoveries.items() if r["recovery_s"] is None]
    running = stack.running_parts(s)
    print(f"  {time.monotonic() - started:6.1f}s checked", flush=True)
    violations += [f"down: {name} is not running at the end" for name in cluster.ORDER
                   if name not in running and name != "replica" and not (name == "demo" and "demo" not in running)]
    return {"seed": seed, "transactions": writer.done, "probe_writes": len(probe.writes),
            "invalidations_checked": checked, "replica_rereads": replica.rereads if replica is not None else 0,
            "replica_batches_checked": replica.batches if replica is not None else 0,
            "keys_checked": sum(1 for t, _b, _c in clients for k in universe(ITEMS, t) if k in writer.window),
            "recoveries": recoveries, "violations": violations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=40.0, help="writer transactions per second")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=60.0, help="longest wait for one recovery, and to settle")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="which members to kill")
    args = parser.parse_args(argv)
    s = load_stack_settings()
    if s.topology != "cluster":
        print("set FRESHWIRE_TOPOLOGY=cluster (and start it: connectors.stack up --detach)", file=sys.stderr)
        return 2
    summary = asyncio.run(run(s, args.rate, args.seed, args.timeout, tuple(args.faults)))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "cluster_faults.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "recoveries"}, indent=2))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Chaos harness: random transactions against the real stack while clients on two gateways hold
subscriptions, and parts are killed (SIGKILL) and restarted or paused (SIGSTOP) one at a time.
At the end it checks the invariants against what the database itself said:

- nothing lost: every client ends at the version of the last transaction that touched each key
  (that commit lies between two WAL positions the writer read from Postgres around it);
- in order, once: per client and key, versions strictly increase;
- nothing leaked: no client received a key outside its token's patterns;
- every process that was not killed is still up, and readiness recovers.

    .venv/bin/python -m bench.chaos --size 10000 --seed 7 [--faults 24]

Prints a summary, writes bench/results/chaos-<seed>.json, exits 1 on any violation.
Loopback only; bounded by --size and --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from clients.python.client import Batch, Client
from connectors import procs, register, services, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from contract.versions import lsn_of_text, version_of_lsn
from gateway.auth import mint

RESULTS = Path(__file__).parent / "results"
SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")
TENANTS = (1, 2)
PARENTS = 4
# Big transactions and big rows in the mix (issue #17): a bulk insert+delete of BULK_ROWS rows, far past
# the consumer's per-transaction key limit, and a BIG_VALUE_BYTES value in a column no rule reads.
BULK_BASE = 10_000_000
BULK_ROWS = 12_000
BIG_VALUE_BYTES = 2 * 1024 * 1024
FAULTS = ("kill cdc", "kill gateway", "kill connect", "kill kafka", "kill redis", "pause cdc", "pause gateway")


def tenant_of(item: int) -> int:
    return 1 + item % 2


def item_key(item: int) -> str:
    return f"chaos:{tenant_of(item)}:item:{item}"


def parent_key(tenant: int, parent: int) -> str:
    return f"chaos:{tenant}:parent:{parent}"


def universe(items: int, tenant: int) -> list[str]:
    return [item_key(i) for i in range(1, items + 1) if tenant_of(i) == tenant] + \
           [parent_key(tenant, p) for p in range(1, PARENTS + 1)]


@dataclass
class Writer:
    """One thread, one transaction at a time: each commit's window is exact, and the harness's own
    model of the table says which keys each transaction touched."""

    s: StackSettings
    rng: random.Random
    items: int
    size: int
    rows: dict[int, tuple[int, str]] = field(default_factory=dict)   # id -> (parent, val)
    window: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (inside, after) of its last tx
    done: int = 0
    allowed: int = 0           # the fault schedule lets the writer run up to here, so faults land mid-stream
    truncates: int = 0
    bulks: int = 0
    big_values: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def _bulk(self, cur: psycopg.Cursor[Any], touched: set[str]) -> None:
        """BULK_ROWS rows in and out in one transaction: released degraded, as per-tenant prefixes
        (`chaos:<tenant>:item:`, `chaos:<tenant>:parent:`), which cover every key of both universes."""
        cur.execute("INSERT INTO chaos_items SELECT g, 1 + g %% 2, 1 + g %% %s, 'bulk' FROM generate_series(%s, %s) g",
                    (PARENTS, BULK_BASE, BULK_BASE + BULK_ROWS - 1))
        cur.execute("DELETE FROM chaos_items WHERE id >= %s", (BULK_BASE,))
        touched.update(k for t in TENANTS for k in universe(self.items, t))
        self.bulks += 1

    def _big_value(self, cur: psycopg.Cursor[Any], touched: set[str]) -> None:
        if not self.rows:
            return self._op(cur, touched)
        item = self.rng.choice(sorted(self.rows))
        parent, _val = self.rows[item]
        cur.execute("UPDATE chaos_items SET val = repeat('x', %s) WHERE id = %s", (BIG_VALUE_BYTES, item))
        self.rows[item] = (parent, "big")
        touched.update({item_key(item), parent_key(tenant_of(item), parent)})
        self.big_values += 1
        return None

    def _op(self, cur: psycopg.Cursor[Any], touched: set[str]) -> None:
        item = self.rng.randint(1, self.items)
        tenant = tenant_of(item)
        if item not in self.rows:
            parent = self.rng.randint(1, PARENTS)
            cur.execute("INSERT INTO chaos_items VALUES (%s, %s, %s, %s)", (item, tenant, parent, "v0"))
            self.rows[item] = (parent, "v0")
            touched.update({item_key(item), parent_key(tenant, parent)})
            return
        parent, _val = self.rows[item]
        roll = self.rng.random()
        if roll < 0.15:
            cur.execute("DELETE FROM chaos_items WHERE id = %s", (item,))
            del self.rows[item]
            touched.update({item_key(item), parent_key(tenant, parent)})
        elif roll < 0.45:
            new_parent = self.rng.randint(1, PARENTS)
            cur.execute("UPDATE chaos_items SET parent_id = %s WHERE id = %s", (new_parent, item))
            self.rows[item] = (new_parent, _val)
            touched.update({item_key(item), parent_key(tenant, parent), parent_key(tenant, new_parent)})
        else:
            val = f"v{self.rng.randint(1, 10**9)}"
            cur.execute("UPDATE chaos_items SET val = %s WHERE id = %s", (val, item))
            self.rows[item] = (parent, val)
            touched.update({item_key(item), parent_key(tenant, parent)})

    def run(self) -> None:
        with psycopg.connect(self.s.app_dsn) as conn:
            conn.execute("TRUNCATE chaos_items")
            conn.commit()
            self.window.clear()
            big_every = max(2, self.size // 3)  # each kind of big transaction at least twice a run
            while self.done < self.size and not self.stop.is_set():
                if self.done >= self.allowed:
                    time.sleep(0.005)
                    continue
                touched: set[str] = set()
                with conn.cursor() as cur:
                    if self.rng.random() < 0.002:
                        cur.execute("TRUNCATE chaos_items")
                        touched.update(k for t in TENANTS for k in universe(self.items, t))
                        self.rows.clear()
                        self.truncates += 1
                    elif self.done % big_every == big_every // 2 or self.rng.random() < 0.001:
                        self._bulk(cur, touched)
                    elif self.done % big_every == big_every - 1 or self.rng.random() < 0.002:
                        self._big_value(cur, touched)
                    else:
                        for _ in range(self.rng.choice((1, 1, 1, 2, 3, 5))):
                            self._op(cur, touched)
                    inside = cur.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                conn.commit()
                after = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                assert inside is not None and after is not None
                span = (version_of_lsn(lsn_of_text(str(inside[0]))), version_of_lsn(lsn_of_text(str(after[0]))))
                for key in touched:
                    self.window[key] = span
                self.done += 1


BUILDERS: dict[str, Callable[[StackSettings], procs.Proc]] = {
    "cdc": services.cdc_proc, "redis": services.redis_proc, "kafka": services.kafka_proc,
    "connect": services.connect_proc, "gateway": services.gateway_proc,
    "gateway2": lambda st: services.gateway_proc(st, "gateway2", st.gateway2_port),
}


def restart(s: StackSettings, name: str) -> None:
    proc = BUILDERS[name](s)
    procs.start(proc, s.pids_dir)
    procs.wait_ready(proc)
    if name in ("connect", "kafka"):
        ensure_connector(s)


def ensure_connector(s: StackSettings) -> None:
    """After Kafka or Connect restarts, a Debezium task that gave up is restarted (as an operator would)."""
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if register.running(s.connect_url, "freshwire-postgres"):
                return
        except register.RegisterError:
            req = urllib.request.Request(
                f"{s.connect_url}/connectors/freshwire-postgres/restart?includeTasks=true&onlyFailed=true",
                method="POST")
            urllib.request.urlopen(req, timeout=10).close()
        time.sleep(0.5)
    raise RuntimeError("the connector did not return to RUNNING")


def inject(s: StackSettings, fault: str, rng: random.Random) -> None:
    verb, part = fault.split()
    name = part if part != "gateway" else rng.choice(("gateway", "gateway2"))
    pid = procs.recorded_pid(s.pids_dir, name)
    if pid is None:
        raise RuntimeError(f"{name} is not running before the fault")
    if verb == "kill":
        procs.kill(name, s.pids_dir, port=BUILDERS[name](s).port)  # gone, its port free: restartable
        time.sleep(rng.uniform(0.2, 1.5))
        restart(s, name)
    else:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(rng.uniform(1.0, 3.0))
        os.kill(pid, signal.SIGCONT)


async def client_task(c: Client, behaviour: str, rng: random.Random, stop: asyncio.Event,
                      on_batch: Callable[[Batch], Awaitable[None]] | None = None) -> None:
    """Takes batches until `stop` as `behaviour` says; `on_batch` sees each one as it is taken."""
    while not stop.is_set():
        try:
            batch = await c.next_batch(0.5)
        except TimeoutError:
            continue
        if on_batch is not None:
            await on_batch(batch)
        if behaviour == "slow":
            await asyncio.sleep(rng.uniform(0.01, 0.1))
        elif behaviour == "reconnecting" and rng.random() < 0.02:
            await c.drop()


async def run(s: StackSettings, size: int, seed: int, faults: int, items: int, timeout_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    tokens = {t: mint(SECRET, f"chaos-{t}", [f"chaos:{t}:*"], 7200) for t in TENANTS}
    behaviours = ["steady", "slow", "reconnecting"]
    clients = []
    for n in range(6):
        tenant = TENANTS[n % 2]
        port = (s.gateway_port, s.gateway2_port)[(n // 2) % 2]
        c = Client(f"ws://{s.host}:{port}/ws", token=tokens[tenant], record=True, max_backoff_s=1.0)
        await c.start()
        await c.subscribe(universe(items, tenant))
        clients.append((tenant, behaviours[n % 3], c))
    stop = asyncio.Event()
    tasks = [asyncio.create_task(client_task(c, b, rng, stop)) for _t, b, c in clients]
    writer = Writer(s, random.Random(seed + 1), items, size)
    step = max(1, size // (faults + 1))
    writer.allowed = step
    thread = threading.Thread(target=writer.run, name="chaos-writer")
    started = time.monotonic()
    thread.start()
    plan = [FAULTS[i % len(FAULTS)] for i in range(faults)]
    rng.shuffle(plan)
    injected: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    for n, fault in enumerate(plan, start=1):
        # fault n strikes once n/(faults+1) of the transactions are in, while the next share is written
        while writer.done < min(size, n * step) - step // 2 and thread.is_alive():
            await asyncio.sleep(0.02)
        writer.allowed = min(size, (n + 1) * step)
        await loop.run_in_executor(None, inject, s, fault, rng)
        injected[fault] += 1
    writer.allowed = size
    while thread.is_alive():
        await asyncio.sleep(0.1)
    wrote_s = time.monotonic() - started

    def lost() -> list[tuple[str, str, str]]:
        return missing_keys(clients, items, writer.window)

    deadline = time.monotonic() + timeout_s
    while lost() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    settled_s = time.monotonic() - started - wrote_s
    stop.set()
    await asyncio.gather(*tasks)
    missing = lost()
    violations: list[str] = [f"lost: {who}: {n} keys" for who, n in Counter(w for w, _k, _g in missing).items()]
    violations += [f"lost: {who} {key} at {got}" for who, key, got in missing[:10]]
    found, checked = received_violations(clients)
    violations += found
    for _t, _b, c in clients:
        await c.close()
    running = stack.running_parts(s)
    for name in ("postgres", "redis", "kafka", "connect", "cdc", "gateway", "gateway2"):
        if name not in running:
            violations.append(f"down: {name} is not running at the end")
    for url in (f"http://{s.host}:{s.cdc_metrics_port}/readyz", f"{s.gateway_url}/readyz",
                f"http://{s.host}:{s.gateway2_port}/readyz"):
        if not await loop.run_in_executor(None, _ready_within, url, 30.0):
            violations.append(f"not ready: {url}")
    return {
        "seed": seed, "transactions": writer.done, "truncates": writer.truncates, "bulk_transactions": writer.bulks,
        "big_values": writer.big_values,
        "faults": dict(injected), "clients": len(clients), "invalidations_checked": checked,
        "keys_checked": sum(1 for t, _b, _c in clients for k in universe(items, t) if k in writer.window),
        "write_seconds": round(wrote_s, 1), "settle_seconds": round(settled_s, 1),
        "violations": violations,
    }


def missing_keys(clients: list[tuple[int, str, Client]], items: int,
                 window: dict[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(client, key, what it holds) for every key a client does not hold at the version of the last
    transaction that touched it (a commit between the two WAL positions of `window`)."""
    missing = []
    for n, (tenant, behaviour, c) in enumerate(clients):
        for key in universe(items, tenant):
            if key in window:
                low, high = window[key]
                got = c.versions.get(key)
                if not (got is not None and low < got <= high):
                    who = f"client {n} (tenant {tenant}, {behaviour}, {c.state}, {c.connects} connects)"
                    missing.append((who, key, f"{got} not in ({low}, {high}]"))
    return missing


def received_violations(clients: list[tuple[int, str, Client]]) -> tuple[list[str], int]:
    """Leaks (another tenant's key) and order breaks (a version not above the last one of its key,
    which also catches a delivery twice) in what each client received; and how many were checked."""
    violations: list[str] = []
    checked = 0
    for tenant, _b, c in clients:
        last: dict[str, str] = {}
        for key, version in c.received:
            checked += 1
            if not key.startswith(f"chaos:{tenant}:"):
                violations.append(f"leak: tenant {tenant} got {key}")
            if version <= last.get(key, ""):
                violations.append(f"order: tenant {tenant} {key} {version} after {last[key]}")
            last[key] = version
    return violations, checked


def _ready_within(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if services.http_ok(url):
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1000, help="transactions to commit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=len(FAULTS), help="faults to inject (kinds rotate)")
    parser.add_argument("--items", type=int, default=60, help="rows the writer plays with")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for quiescence")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where chaos-<seed>.json goes")
    args = parser.parse_args(argv)
    s = load_stack_settings()
    started = stack.up(s, two_gateways=True, quiet=True)
    try:
        summary = asyncio.run(run(s, args.size, args.seed, args.faults, args.items, args.timeout))
    finally:
        stack.down(s, only=started, quiet=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"chaos-{args.seed}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "violations"}, indent=2))
    print(f"violations: {len(summary['violations'])}")
    for v in summary["violations"][:20]:
        print("  " + v)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

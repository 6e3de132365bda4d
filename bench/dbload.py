"""Polling vs CDC database load (issue #8, part 4): what C live dashboards cost Postgres.

    .venv/bin/python -m bench.dbload [--rate 50] [--clients 50] [--poll-interval 1] [--seconds 60]
    bash bench/dbload.sh [flags]   # the same on a private stack (own ports and state dir)

One writer commits card updates at --rate tx/s, each the demo's write transaction (demo/store.py
update_card: idempotency check, UPDATE with an expected version, outbox row, write token,
idempotency row) on one kept connection, over --boards boards of --cards-per-board cards (a
random card each time). Four arms of --seconds each (--arms picks some; baseline always first):

1. baseline: the writes only. The Debezium connector is STOPPED (Connect REST `PUT .../stop`:
   no task, no walsender, no heartbeat query) and the cdc consumer and gateway are not running
   (started for the Freshwire arms only), so the baseline is Postgres serving the writes plus its
   own background processes. When the stack was already running with its apps (a shared default
   stack), the cdc consumer's slot query (one per 5 s) stays in.
2. polling: C clients, client i on board i mod B, each with its own connection (no pool), run the
   board's cards query (demo/store.py Store.board) every --poll-interval s, staggered.
3. freshwire-direct: the connector resumed (after it caught up on the WAL of arms 1-2), cdc and
   gateway running; C clients hold a WebSocket subscription to their board's card keys
   (tenant:1:card:<id>, as the demo board does) through the real gateway and, on each invalidation,
   refetch the changed card by id on their own connection: rate x C/B reads per second.
4. freshwire-cached: as 3, but the refetches go through one read-through cache shared by all the
   clients, keyed by (key, version): only the first asker of a (key, version) reads Postgres, so at
   most one read per write (bench/dbload_cache.py; it sits in the clients' process, no network hop).

Issue #14 added (bench/dbload_sweep.py sweeps them over dashboard counts, Postgres pinned or not):
- polling-100ms: as 2, every 0.1 s (about the freshness Freshwire gives), whatever --poll-interval.
- freshwire-pushed: as 4, but a key whose invalidate carries the row (`data`, the rules' `payload`
  columns) is applied from it with no read; a key without data is refetched through the cache.
Polling clients share at most POLL_CONNECTIONS (40) connections (client i on i mod 40), so 1,000
dashboards fit max_connections; freshwire-direct still holds one connection per client.

Per arm: Postgres CPU seconds from /proc (postmaster and every child, plus the postmaster's
cutime+cstime for backends that exited), per 1k writes and as % over the baseline, with the CDC
part (walsender + Debezium's own connection: heartbeat and metadata queries) apart; the `targets`
section compares each Freshwire arm, and its CDC part alone, with the issue's 5 %.
pg_stat_statements (reset at the arm's start; the superuser's own queries left out); WAL bytes and
pg_stat_wal records/FPIs; client reads; freshness: commit (writer's time.time() right after COMMIT)
-> the first client read that shows the card's new version, and for Freshwire commit -> invalidation
receipt (matched by WAL position), the refetches that read a card older than the transaction their
invalidation announced, and how many of them a retry after 5 ms fixed. A CHECKPOINT precedes every arm.

Experiments (restored in `finally`): --publication-tables re-creates the publication FOR TABLE those
(one transaction) instead of FOR ALL TABLES; --heartbeat-ms sets Debezium's heartbeat.interval.ms for
the Freshwire arms (0: no heartbeat, no heartbeat.action.query); --connector-config k=v,k=v sets any
other connector keys for them (e.g. poll.interval.ms=100); --replica-identity default|full sets the
written tables' (WRITTEN_TABLES) replica identity before the warm-up, then puts back what each had.

Cores (2, shared, no pinning): the writer runs in this process, all C clients in one child process
(asyncio); each arm records the stack's processes' CPU and the machine's busy share. Writes
bench/results/<--out>.json and .png. Loopback only; a watchdog bounds the run. Connections: C + ~6
must fit Postgres' max_connections (100).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench import dbload_stack as st
from bench import report
from bench.dbload_clients import POLL_CONNECTIONS, TENANT, ArmResult, ClientPlan, Mode, client_process
from bench.dbload_metrics import Commit, pct_over, poll_interval, read_cost_ms, target_of
from bench.dbload_pg import CLK_TCK, snapshot, statements
from bench.dbload_report import plot, print_table, summarize
from clients.python.tokens import WRITE_TOKEN_SQL
from connectors import procs, register, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from contract.versions import lsn_of_text, version_of_lsn
from demo.store import CARD_FIELDS, COLUMNS

ARMS: dict[str, Mode | None] = {"baseline": None, "polling": "poll", "polling-100ms": "poll",
                                "freshwire-direct": "direct", "freshwire-cached": "cached",
                                "freshwire-pushed": "pushed"}
FRESHWIRE: tuple[Mode, ...] = ("direct", "cached", "pushed")
SETTLE_S = 2.0
DRAIN_S = 2.0          # after the last write, before the Freshwire clients stop
REPORT_S = 60.0
CLIENT_GRACE_S = 120   # the client process gives up on its own this long after its arm should end
Announce = Callable[[str, int, int], None]


@dataclass
class Writer:
    conn: psycopg.Connection[dict[str, Any]]
    cards: list[int]
    versions: dict[int, int]
    statuses: dict[int, str]
    rng: random.Random = field(default_factory=lambda: random.Random(8))

    def write_one(self, announce: Announce | None = None) -> Commit:
        """The demo's update_card transaction (demo/store.py), on a kept connection. `announce` gets
        (token position, card, version) just before COMMIT: a refetch can then tell it read the card
        older than announced even when the commit is visible before COMMIT returns here (or after)."""
        card = self.rng.choice(self.cards)
        status = self.rng.choice([c for c in COLUMNS if c != self.statuses[card]])
        key = uuid.uuid4().hex
        c = self.conn
        c.execute("SELECT response FROM idempotency_keys WHERE key = %s", (key,))
        row = c.execute(f"UPDATE cards SET status = %s, version = version + 1, updated_at = clock_timestamp() "
                        f"WHERE id = %s AND version = %s RETURNING {CARD_FIELDS}",
                        (status, card, self.versions[card])).fetchone()
        if row is None:
            raise RuntimeError(f"card {card} changed under the writer")
        c.execute("INSERT INTO outbox (aggregatetype, aggregateid, type, payload, keys) VALUES "
                  "('card', %s, 'card.updated', %s, %s)",
                  (str(card), json.dumps({"changes": {"status": status}, "version": row["version"]}),
                   [f"tenant:{row['tenant_id']}:card-events:{card}"]))
        token, lsn = (c.execute(WRITE_TOKEN_SQL).fetchone() or {}).values()
        c.execute("INSERT INTO idempotency_keys (key, response) VALUES (%s, %s)",
                  (key, json.dumps({"card": row, "token": token})))
        wal = version_of_lsn(lsn_of_text(str(lsn)))
        if announce is not None:
            announce(wal, card, row["version"])
        c.commit()
        t = time.time()
        self.versions[card], self.statuses[card] = row["version"], status
        return Commit(card, row["version"], wal, t)

    def run(self, rate: float, seconds: float, announce: Announce | None = None) -> list[Commit]:
        out: list[Commit] = []
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            out.append(self.write_one(announce))
            delay = start + len(out) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        return out


def prepare_boards(s: StackSettings, boards: int, per_board: int) -> dict[int, list[int]]:
    """Boards named 'dbload' (reused across runs, so the cards table does not grow run by run)."""
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM boards WHERE name = 'dbload' ORDER BY id").fetchall()]
        for _ in range(boards - len(ids)):
            ids.append(conn.execute("INSERT INTO boards (tenant_id, name) VALUES (%s, 'dbload') RETURNING id",
                                    (TENANT,)).fetchone()[0])  # type: ignore[index]
        out = {}
        for b in ids[:boards]:
            cards = [r[0] for r in conn.execute("SELECT id FROM cards WHERE board_id = %s ORDER BY id", (b,))]
            for _ in range(per_board - len(cards)):
                cards.append(conn.execute("INSERT INTO cards (tenant_id, board_id, title) VALUES (%s, %s, 'load') "
                                          "RETURNING id", (TENANT, b)).fetchone()[0])  # type: ignore[index]
            out[b] = cards[:per_board]
    return out


def commit_sender(pipe: Connection) -> Announce:
    """Each transaction's (token position, card, version) to the clients' process, which checks refetches with it."""
    def send(wal: str, card: int, version: int) -> None:
        pipe.send((wal, card, version))

    return send


def run_arm(name: str, s: StackSettings, writer: Writer, args: argparse.Namespace, root: int,
            boards: dict[int, list[int]]) -> dict[str, Any]:
    mode = ARMS[name]
    pids = {n: pid for n, pid in stack.running_parts(s).items() if n != "postgres"} | {"bench (writer)": os.getpid()}
    interval = poll_interval(name, args.poll_interval)
    plan = ClientPlan(mode or "poll", s.app_dsn, f"ws://{s.host}:{s.gateway_port}/ws", boards, args.clients,
                      interval, time.time() + args.seconds + CLIENT_GRACE_S)
    result: ArmResult | None = None
    with psycopg.connect(s.pg_dsn, autocommit=True) as mon, \
            (client_process(plan) if mode else contextlib.nullcontext()) as child:
        if child is not None:
            pids["clients"] = child[0].pid or 0
        announce = commit_sender(child[2]) if child is not None and mode != "poll" else None
        mon.execute("CHECKPOINT")
        time.sleep(SETTLE_S)
        mon.execute("SELECT pg_stat_statements_reset()")
        before = snapshot(mon, root, pids)
        commits = writer.run(args.rate, args.seconds, announce)
        after = snapshot(mon, root, pids)
        stmts = statements(mon)
        end_wal = version_of_lsn(after.wal_lsn)
        if child is not None:
            time.sleep(interval + 1.0 if mode == "poll" else DRAIN_S)   # the last commits reach the reads
            child[1].send("stop")
            if not child[1].poll(REPORT_S):
                raise TimeoutError("clients did not report")
            result = child[1].recv()
    return summarize(name, args, commits, end_wal, before, after, stmts, result)


WRITTEN_TABLES = ("cards", "boards", "outbox")   # what the demo's write transaction touches and the CDC decodes
IDENTITY = {"d": "default", "f": "full", "n": "nothing", "i": "index"}


def replica_identities(s: StackSettings) -> dict[str, str]:
    """relreplident of WRITTEN_TABLES, as ALTER TABLE spells it (default, full, ...)."""
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT relname, relreplident FROM pg_class WHERE relname = ANY(%s) AND relkind = 'r' "
                            "AND relnamespace = 'public'::regnamespace", (list(WRITTEN_TABLES),)).fetchall()
    return {str(r[0]): IDENTITY[str(r[1])] for r in rows}


def set_replica_identities(s: StackSettings, identities: dict[str, str]) -> None:
    if any(t not in WRITTEN_TABLES or i not in ("default", "full") for t, i in identities.items()):
        raise ValueError(f"replica identity: {identities}")
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        for table, identity in identities.items():
            conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY {identity.upper()}".encode())


def run_arms(s: StackSettings, args: argparse.Namespace, started: list[str],
             experiments: dict[str, Any]) -> list[dict[str, Any]]:
    """Warm up, then the arms; the connector is stopped until the first Freshwire arm, and whatever the
    experiment flags changed (publication, connector config) is put back, the connector resumed."""
    root = procs.recorded_pid(s.pids_dir, "postgres")
    if root is None:
        raise RuntimeError("postgres is not running")
    direct = "freshwire-direct" in args.arms
    if (args.clients if direct else min(args.clients, POLL_CONNECTIONS)) + 10 > int(st.pg_value(
            s, "SHOW max_connections")):
        raise SystemExit("--clients: each client holds a connection; too many for max_connections")
    st.pg_value(s, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    boards = prepare_boards(s, args.boards, args.cards_per_board)
    name, config = register.connector_config(s.host, s.pg_port)
    slot, publication = config["slot.name"], config["publication.name"]
    saved_tables = st.publication_tables(s, publication)
    saved_config = st.connector_config(s, name)
    saved_identity = replica_identities(s)
    overrides = dict(args.connector_config or {})
    if args.heartbeat_ms is not None:
        overrides["heartbeat.interval.ms"] = str(args.heartbeat_ms)
    experiments |= {"publication_before": saved_tables or "ALL TABLES", "heartbeat_ms": args.heartbeat_ms,
                    "heartbeat_ms_before": saved_config.get("heartbeat.interval.ms"),
                    "connector_config": overrides, "connector_config_before": {
                        k: saved_config.get(k) for k in overrides},
                    "replica_identity_before": saved_identity}
    arms: list[dict[str, Any]] = []
    try:
        if args.replica_identity:
            set_replica_identities(s, {t: args.replica_identity for t in saved_identity})
            experiments["replica_identity_during"] = replica_identities(s)
        if args.publication_tables:
            st.set_publication(s, publication, args.publication_tables)
            experiments["publication_during"] = st.publication_tables(s, publication)
        st.stop_connector(s, name)
        with psycopg.connect(s.app_dsn, row_factory=dict_row) as conn:
            ids = [c for cards in boards.values() for c in cards]
            rows = conn.execute("SELECT id, version, status FROM cards WHERE id = ANY(%s)", (ids,)).fetchall()
            conn.commit()
            writer = Writer(conn, ids, {r["id"]: r["version"] for r in rows}, {r["id"]: r["status"] for r in rows})
            writer.run(args.rate, args.warmup)
            streaming = False
            for arm in args.arms:
                if ARMS[arm] in FRESHWIRE:
                    if not streaming:
                        if overrides:
                            st.put_connector_config(s, name, saved_config | overrides)
                        st.resume_connector(s, name, slot)
                        st.start_apps(s, started)
                        streaming = True
                    st.catch_up(s, writer.write_one().wal)
                arms.append(run_arm(arm, s, writer, args, root, boards))
                print(f"  {arm} done: {arms[-1]['pg_cpu_s_per_1k_writes']:.3f} PG CPU s per 1k writes", flush=True)
    finally:
        restore(s, name, slot, publication, saved_tables, saved_config, args, experiments)
        if args.replica_identity:
            try:
                set_replica_identities(s, saved_identity)
                experiments["replica_identity_restored"] = replica_identities(s)
            except Exception as exc:
                print(f"could not restore replica identity {saved_identity}: {exc}")
    return arms


def restore(s: StackSettings, name: str, slot: str, publication: str, tables: list[str] | None,
            config: dict[str, str], args: argparse.Namespace, experiments: dict[str, Any]) -> None:
    """Never leave the publication changed or the connector reconfigured or STOPPED (that state outlives
    Connect: it is in its config topic)."""
    if args.publication_tables:
        try:
            st.set_publication(s, publication, tables)
            experiments["publication_restored"] = st.publication_tables(s, publication) or "ALL TABLES"
        except Exception as exc:
            print(f"could not restore publication {publication} ({tables or 'ALL TABLES'}): {exc}")
    try:
        if args.heartbeat_ms is not None or args.connector_config:
            st.put_connector_config(s, name, config)
            experiments["heartbeat_ms_restored"] = st.connector_config(s, name).get("heartbeat.interval.ms")
        if not register.running(s.connect_url, name):
            st.resume_connector(s, name, slot)
    except Exception as exc:
        print(f"could not restore connector {name}: {exc}; PUT {s.connect_url}/connectors/{name}/resume")


def connector_pairs(value: str) -> dict[str, str]:
    """k=v,k=v -> {k: v} (connector keys; the values are strings, as Connect holds them)."""
    pairs = [item.split("=", 1) for item in value.split(",") if item]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"expected key=value,...: {value!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """The connector and replica-identity experiment flags (bench/dbload_sweep.py has them too)."""
    parser.add_argument("--connector-config", type=connector_pairs, default=None,
                        help="experiment: connector keys during the Freshwire arms, e.g. poll.interval.ms=100")
    parser.add_argument("--replica-identity", choices=["default", "full"], default=None,
                        help=f"experiment: REPLICA IDENTITY of {', '.join(WRITTEN_TABLES)} during the run")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="card-update transactions per second")
    parser.add_argument("--clients", type=int, default=50, help="dashboard clients in the client arms")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls (T)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each arm")
    parser.add_argument("--boards", type=int, default=10, help="boards; client i watches board i mod boards")
    parser.add_argument("--cards-per-board", type=int, default=20)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured writes first")
    parser.add_argument("--arms", type=lambda v: v.split(","), default=list(ARMS),
                        help=f"comma-separated, in order, baseline first (default {','.join(ARMS)})")
    parser.add_argument("--publication-tables", type=lambda v: v.split(","), default=None,
                        help="experiment: publish only these tables during the run (e.g. "
                             "cards,outbox,boards,freshwire_heartbeat)")
    parser.add_argument("--heartbeat-ms", type=int, default=None,
                        help="experiment: Debezium heartbeat.interval.ms during the Freshwire arms (0: none)")
    add_config_flags(parser)
    parser.add_argument("--out", default="dbload", help="results name: bench/results/<out>.json and .png")
    args = parser.parse_args()
    if args.arms[0] != "baseline" or any(a not in ARMS for a in args.arms) or len(set(args.arms)) < len(args.arms):
        parser.error(f"--arms: distinct names of {list(ARMS)}, baseline first")
    return args


def main() -> None:
    args = parse_args()
    budget = int(len(args.arms) * (args.seconds + args.poll_interval + 60) + 3 * st.WAIT_S + 300)

    def watchdog(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"dbload: over its {budget}s budget")

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(budget)
    s = load_stack_settings()
    started = stack.up(s, with_apps=False, quiet=True)
    apps_in_baseline = [n for n in ("cdc", "gateway", "gateway2", "demo") if n in stack.running_parts(s)]
    experiments: dict[str, Any] = {}
    try:
        arms = run_arms(s, args, started, experiments)
    finally:
        stack.down(s, only=started, quiet=True)
        signal.alarm(0)
    base = arms[0]["pg_cpu_s_per_1k_writes"]
    for a in arms[1:]:
        a["pg_cpu_ms_per_client_read"] = round(read_cost_ms(a, base), 4)
    targets = {a["arm"]: target_of(a, base) for a in arms if ARMS[a["arm"]] in FRESHWIRE}
    report.write_json(args.out, {
        "machine": report.machine_info(), "settings": vars(args),
        "viewers_per_board": round(args.clients / args.boards, 2),
        "stack": {"pg_port": s.pg_port, "state_dir": str(s.state_dir), "apps_running_in_baseline": apps_in_baseline,
                  "clients_connection": "one per client (no pool); freshwire-cached: one shared",
                  "cache": "in the clients' process (asyncio, dict of futures), shared by all clients of the arm",
                  "clk_tck": CLK_TCK},
        "experiments": experiments,
        "targets": targets,
        "arms": arms,
        "pg_cpu_pct_over_baseline": {a["arm"]: round(pct_over(a["pg_cpu_s_per_1k_writes"], base), 1) for a in arms},
    })
    print_table(arms, targets)
    plot(arms, args, args.out)


if __name__ == "__main__":
    main()

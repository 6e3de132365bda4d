"""bench/dbload.py's control of the stack: the Debezium connector (stop, resume, config overrides), the
cdc consumer and gateway, catching up, and the publication experiment. Everything it changes it can
put back, and bench/dbload.py does so in a `finally`."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from bench.dbload_metrics import publication_ddl
from connectors import procs, register, services, stack
from connectors.stack_settings import StackSettings

WAIT_S = 180.0
POLL_S = 0.25


def connect_call(s: StackSettings, method: str, path: str) -> Any:
    req = urllib.request.Request(f"{s.connect_url}{path}", method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f}s")
        time.sleep(POLL_S)


def pg_value(s: StackSettings, sql: str, params: Sequence[Any] = ()) -> Any:
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        row = cur.fetchone() if cur.description else None
    return row[0] if row else None


def stop_connector(s: StackSettings, name: str) -> None:
    """Connect's STOPPED state: tasks shut down, so no walsender and no heartbeat query remain."""
    connect_call(s, "PUT", f"/connectors/{name}/stop")
    wait_for("connector stopped", lambda: pg_value(s, "SELECT count(*) FROM pg_stat_activity "
                                                     "WHERE usename = 'freshwire_cdc'") == 0)


def resume_connector(s: StackSettings, name: str, slot: str) -> None:
    connect_call(s, "PUT", f"/connectors/{name}/resume")
    wait_for("connector streaming", lambda: register.running(s.connect_url, name)
             and register.slot_active(s.pg_dsn, slot))


def connector_config(s: StackSettings, name: str) -> dict[str, str]:
    """The config Connect holds now (what the experiment flags restore)."""
    config: dict[str, str] = connect_call(s, "GET", f"/connectors/{name}/config")
    return config


def put_connector_config(s: StackSettings, name: str, config: dict[str, str]) -> None:
    """PUT the config, then wait out the restart and rebalance it causes (Connect answers 500/409 meanwhile)
    until the connector runs on it, unless it is STOPPED (then it stays so, holding the new config)."""
    register.put_config(s.connect_url, name, {k: v for k, v in config.items() if k != "name"})

    def applied() -> bool:
        try:
            held = connector_config(s, name)
            state = connect_call(s, "GET", f"/connectors/{name}/status")["connector"]["state"]
        except OSError:   # urllib's HTTPError included
            return False
        settled = state == "STOPPED" or register.running(s.connect_url, name)
        return settled and all(held.get(k) == v for k, v in config.items() if k != "name")

    wait_for("connector config applied", applied)


def gateway_watermark(s: StackSettings) -> str | None:
    with urllib.request.urlopen(f"{s.gateway_url}/v1/watermark", timeout=5) as r:
        mark: str | None = json.load(r)["watermark"]
    return mark


def catch_up(s: StackSettings, marker: str) -> None:
    """Until the gateway released the marker transaction (written after everything else, at WAL position
    `marker`): Debezium and the walsender are then through the WAL of the arms before.

    (Not the slot's confirmed_flush_lsn against pg_current_wal_lsn(): without heartbeats, the slot
    only moves with captured changes and may never reach the current position.)"""
    def released() -> bool:
        mark = gateway_watermark(s)
        return mark is not None and mark >= marker

    wait_for("gateway caught up", released)


def start_apps(s: StackSettings, started: list[str]) -> None:
    running = stack.running_parts(s)
    for proc in (services.cdc_proc(s), services.gateway_proc(s)):
        if proc.name not in running:
            procs.start(proc, s.pids_dir)
            started.append(proc.name)
            procs.wait_ready(proc)


def publication_tables(s: StackSettings, name: str) -> list[str] | None:
    """The publication's tables, None for FOR ALL TABLES."""
    if pg_value(s, "SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)):
        return None
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s "
                            "ORDER BY 1", (name,)).fetchall()
    return [r[0] for r in rows]


def set_publication(s: StackSettings, name: str, tables: Sequence[str] | None) -> None:
    """Drop and re-create in one transaction; the owner is kept (superuser re-creates it, then hands it back)."""
    owner = pg_value(s, "SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = %s", (name,))
    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(publication_ddl(name, tables).encode())
        if owner and owner != "postgres":
            conn.execute(f'ALTER PUBLICATION {name} OWNER TO "{owner}"'.encode())

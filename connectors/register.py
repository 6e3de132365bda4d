"""Register the Debezium connector through Connect's REST API (an idempotent PUT) and wait until
it streams: connector and task RUNNING and the replication slot active.

    python -m connectors.register --connect http://127.0.0.1:18083 --pg-host 127.0.0.1 --pg-port 15432 \
        --rules demo/rules.toml
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cdc.rules import Rules, load_rules
from connectors import publication
from connectors.capture import capture_settings

CONFIG_FILE = Path(__file__).with_name("freshwire-postgres.json")


class RegisterError(RuntimeError):
    """Connect refused the config or the connector did not reach RUNNING; `status` is the HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def connector_config(pg_host: str, pg_port: int, overrides: dict[str, str] | None = None,
                     rules: Rules | None = None) -> tuple[str, dict[str, str]]:
    """The connector's config: the JSON file, the database address, and what the rules capture."""
    spec = json.loads(CONFIG_FILE.read_text())
    config: dict[str, str] = dict(spec["config"])
    config["database.hostname"] = pg_host
    config["database.port"] = str(pg_port)
    config.update(capture_settings(rules or Rules({})))
    config.update(overrides or {})
    return str(spec["name"]), config


def _request(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise RegisterError(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}", e.code) from None


PUT_ATTEMPTS = 30


def put_config(connect_url: str, name: str, config: dict[str, str]) -> None:
    """Idempotent PUT; retried while Connect is still joining its group (409) or not listening yet."""
    for attempt in range(PUT_ATTEMPTS):
        try:
            _request("PUT", f"{connect_url}/connectors/{name}/config", config)
            return
        except (RegisterError, OSError) as exc:
            retriable = isinstance(exc, OSError) or exc.status in (409, 503)
            if not retriable or attempt == PUT_ATTEMPTS - 1:
                raise
            time.sleep(1.0)


def status(connect_url: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = _request("GET", f"{connect_url}/connectors/{name}/status")
    return result


def running(connect_url: str, name: str) -> bool:
    try:
        st = status(connect_url, name)
    except (RegisterError, OSError):
        return False
    tasks = st.get("tasks", [])
    if any(t.get("state") == "FAILED" for t in tasks):
        trace = next(t.get("trace", "") for t in tasks if t.get("state") == "FAILED")
        raise RegisterError(f"connector task FAILED: {trace[:2000]}")
    return st["connector"]["state"] == "RUNNING" and bool(tasks) and all(t["state"] == "RUNNING" for t in tasks)


def slot_active(pg_dsn: str, slot: str) -> bool:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return bool(row and row[0])


def register(connect_url: str, pg_host: str, pg_port: int, pg_dsn: str | None = None,
             overrides: dict[str, str] | None = None, timeout_s: float = 120, rules: Rules | None = None) -> None:
    name, config = connector_config(pg_host, pg_port, overrides, rules)
    put_config(connect_url, name, config)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running(connect_url, name) and (pg_dsn is None or slot_active(pg_dsn, config["slot.name"])):
            return
        time.sleep(0.25)
    raise RegisterError(f"connector {name} not streaming after {timeout_s:.0f}s: {status(connect_url, name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connect", default="http://127.0.0.1:18083")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=15432)
    parser.add_argument("--pg-dsn", default=None, help="if given, also wait for the slot to be active")
    parser.add_argument("--rules", default=os.environ.get("FRESHWIRE_RULES") or None,
                        help="rules file: capture only its tables and the columns it reads "
                             "(env FRESHWIRE_RULES; none: every table and column)")
    parser.add_argument("--sync-publication", action="store_true",
                        help="first make the publication hold exactly the rule tables (needs --pg-dsn of a "
                             "superuser or the tables' owner, and --rules)")
    args = parser.parse_args()
    rules = load_rules(Path(args.rules)) if args.rules else None
    if args.sync_publication:
        if rules is None or args.pg_dsn is None:
            parser.error("--sync-publication needs --rules and --pg-dsn")
        done = publication.sync(args.pg_dsn, rules, connector_config(args.pg_host, args.pg_port)[1]["publication.name"])
        for table, why in done.skipped:
            print(f"publication: left out {table}: {why}")
    register(args.connect, args.pg_host, args.pg_port, args.pg_dsn, rules=rules)
    print("connector registered and streaming")


if __name__ == "__main__":
    main()

"""The doctor against real engines: the stack's own database, Redis and Kafka pass; each failure it
checks for is reported on something prepared to fail it (a second small PostgreSQL cluster with
wal_level=replica, throwaway roles and tables in the stack's database, an evicting Redis of our own).
Nothing of the stack is changed: only doctor_probe_* objects, dropped again."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from cdc.rules import load_rules
from connectors import doctor
from connectors.doctor_checks import Check, Names
from connectors.procs import run_as
from connectors.stack_settings import REPO, StackSettings, load_stack_settings

DEMO_RULES = REPO / "demo" / "rules.toml"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 120.0
PROBE_TABLE = "doctor_probe_items"
PROBE_ROLES = ("doctor_probe_cdc", "doctor_probe_norepl")


def _free_port(first: int) -> int:
    for port in range(first, first + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + 199}")


def _cli(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHWIRE_")}  # the flags say it all
    result = subprocess.run([sys.executable, "-m", "connectors.doctor", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def _by_label(checks: list[Check]) -> dict[str, Check]:
    return {c.label: c for c in checks}


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


# --- the stack's own database passes --------------------------------------------------------------

def test_doctor_stack_database_redis_and_kafka_pass(stack_settings: StackSettings) -> None:
    s = stack_settings
    code, out = _cli("--dsn", s.pg_dsn, "--rules", str(DEMO_RULES), "--redis-url", s.redis_url,
                     "--kafka-bootstrap", s.kafka_bootstrap, "--json")
    doc = json.loads(out)
    blockers = [c for c in doc["checks"] if c["level"] == "blocker"]
    assert code == 0 and doc["ok"] is True and not blockers, blockers
    levels = {c["name"]: c["level"] for c in doc["checks"] if not c["subject"]}
    for name in ("wal_level", "replication_slots", "wal_senders", "slot_wal_keep_size", "slot", "cdc_role",
                 "cdc_select", "heartbeat", "redis_policy", "redis_ttl", "redis_persistence", "version_store"):
        assert levels[name] == "ok", (name, doc["checks"])
    subjects = {(c["name"], c["subject"]) for c in doc["checks"]}
    for table in load_rules(DEMO_RULES).tables:
        assert {("table", table), ("replica_identity", table), ("columns", table)} <= subjects


def test_doctor_app_owner_dsn_reads_enough_to_pass(stack_settings: StackSettings) -> None:
    checks = doctor.check_postgres(stack_settings.app_dsn, load_rules(DEMO_RULES))
    assert not [c for c in checks if c.level == "blocker"], checks
    assert _by_label(checks)["wal_senders"].detail.startswith(("1 of", "2 of", "3 of"))  # the walsenders are seen


# --- a second cluster with wal_level=replica ------------------------------------------------------

@pytest.fixture(scope="module")
def replica_level_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with wal_level=replica and no slot or WAL sender to spare."""
    pg_bin = load_stack_settings().pg_bin
    root = Path(tempfile.mkdtemp(prefix="doctor_probe_pg_"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            entry = pwd.getpwnam("postgres")
            os.chown(root, entry.pw_uid, entry.pw_gid)
        subprocess.run([str(pg_bin / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120, preexec_fn=run_as("postgres"))
        port = _free_port(25432)
        with open(root / "data" / "doctor.log", "wb") as log:
            proc = subprocess.Popen(
                [str(pg_bin / "postgres"), "-D", str(root / "data"), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
                 "-c", "wal_level=replica", "-c", "max_replication_slots=0", "-c", "max_wal_senders=0"],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=run_as("postgres"), start_new_session=True)
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                psycopg.connect(dsn, connect_timeout=1).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "data" / "doctor.log").read_text()) from None
                time.sleep(0.2)
        yield dsn
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(root, ignore_errors=True)


def test_doctor_wal_level_replica_cluster_is_blocked(replica_level_dsn: str) -> None:
    checks = _by_label(doctor.check_postgres(replica_level_dsn, None))
    assert checks["wal_level"].level == "blocker" and "'replica'" in checks["wal_level"].detail
    assert checks["wal_level"].fix == "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL"
    assert checks["replication_slots"].level == "blocker" and "max_replication_slots" in checks["replication_slots"].fix
    assert checks["wal_senders"].level == "blocker" and "max_wal_senders" in checks["wal_senders"].fix
    assert checks["slot_wal_keep_size"].level == "warning"  # -1 by default
    assert checks["cdc_role"].level == "blocker"  # no freshwire_cdc role there
    assert checks["publication"].level == "blocker" and checks["heartbeat"].level == "blocker"


def test_doctor_cli_prints_the_blocker_line_and_exits_2(replica_level_dsn: str) -> None:
    code, out = _cli("--dsn", replica_level_dsn, "--redis-url", "", "--kafka-bootstrap", "")
    assert code == 2
    line = next(x for x in out.splitlines() if x.split()[1:2] == ["wal_level"])
    assert line.startswith("blocker  wal_level ")
    assert line.endswith("is 'replica'; logical decoding needs 'logical'   "
                         "fix: ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")


def test_doctor_unreachable_dsn_is_one_blocker_line() -> None:
    code, out = _cli("--dsn", f"postgresql://postgres@127.0.0.1:{_free_port(25532)}/app", "--redis-url", "")
    assert code == 2 and [x.split()[:2] for x in out.splitlines()] == [["skipped", "rules"], ["blocker", "postgres"]]


# --- throwaway roles and tables in the stack's database -------------------------------------------

@pytest.fixture
def probe_roles(stack_settings: StackSettings) -> Iterator[None]:
    """doctor_probe_cdc: LOGIN REPLICATION, no SELECT anywhere; doctor_probe_norepl: LOGIN only."""
    with psycopg.connect(stack_settings.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        for role in PROBE_ROLES:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("CREATE ROLE doctor_probe_cdc LOGIN REPLICATION")
        conn.execute("CREATE ROLE doctor_probe_norepl LOGIN")
        try:
            yield
        finally:
            for role in PROBE_ROLES:
                conn.execute(f"DROP ROLE IF EXISTS {role}")


def test_doctor_missing_privileges_are_blocked(stack_settings: StackSettings, probe_roles: None) -> None:
    rules = load_rules(DEMO_RULES)
    checks = _by_label(doctor.check_postgres(stack_settings.pg_dsn, rules, Names(cdc_role="doctor_probe_cdc")))
    assert checks["cdc_role"].level == "ok"
    select = checks["cdc_select"]
    assert select.level == "blocker" and all(t in select.detail for t in rules.tables)
    assert "GRANT SELECT ON public.boards, public.cards" in select.fix and select.fix.endswith(" TO doctor_probe_cdc;")
    assert checks["heartbeat"].level == "blocker"
    assert "GRANT SELECT, INSERT, UPDATE ON public.freshwire_heartbeat TO doctor_probe_cdc;" in checks["heartbeat"].fix
    norepl = _by_label(doctor.check_postgres(stack_settings.pg_dsn, rules, Names(cdc_role="doctor_probe_norepl")))
    assert norepl["cdc_role"].level == "blocker"
    assert norepl["cdc_role"].fix == "ALTER ROLE doctor_probe_norepl REPLICATION;"
    code, _out = _cli("--dsn", stack_settings.pg_dsn, "--rules", str(DEMO_RULES), "--cdc-role", "doctor_probe_cdc",
                      "--redis-url", "")
    assert code == 2


@pytest.fixture
def probe_table(stack_settings: StackSettings) -> Iterator[str]:
    """A table with a primary key and REPLICA IDENTITY DEFAULT, no rows (nothing reaches Debezium)."""
    with psycopg.connect(stack_settings.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP TABLE IF EXISTS public.{PROBE_TABLE}")
        conn.execute(f"CREATE TABLE public.{PROBE_TABLE} (id int PRIMARY KEY, tenant_id int NOT NULL, "
                     "parent_id int, val text)")
        try:
            yield f"public.{PROBE_TABLE}"
        finally:
            conn.execute(f"DROP TABLE IF EXISTS public.{PROBE_TABLE}")


def test_doctor_replica_identity_unknown_column_and_missing_table_are_blocked(
        stack_settings: StackSettings, probe_table: str, tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        f'[tables."{probe_table}"]\n'
        'keys = ["probe:{tenant_id}:item:{id}", "probe:parent:{parent_id}", "probe:colour:{colour}"]\n'
        '[tables."public.doctor_probe_missing"]\nkeys = ["missing:{id}"]\n'
        '[tables."public.freshwire_heartbeat"]\nkeys = []\n')
    checks = _by_label(doctor.check_postgres(stack_settings.pg_dsn, load_rules(rules_file)))
    identity = checks[f"replica_identity {probe_table}"]
    assert identity.level == "blocker" and "parent_id, tenant_id" in identity.detail
    assert identity.fix == f"ALTER TABLE {probe_table} REPLICA IDENTITY FULL;"
    columns = checks[f"columns {probe_table}"]
    assert columns.level == "blocker" and "colour" in columns.detail
    assert checks["table public.doctor_probe_missing"].level == "blocker"
    assert checks[f"table {probe_table}"].level == "ok"

    code, out = _cli("--dsn", stack_settings.pg_dsn, "--rules", str(rules_file), "--redis-url", "", "--json")
    assert code == 2 and {"replica_identity", "columns", "table"} <= {
        c["name"] for c in json.loads(out)["checks"] if c["level"] == "blocker"}

    with psycopg.connect(stack_settings.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(identity.fix)  # our own throwaway table: the printed fix clears the blocker
    after = _by_label(doctor.check_postgres(stack_settings.pg_dsn, load_rules(rules_file)))
    assert after[f"replica_identity {probe_table}"].level == "ok"


# --- an evicting Redis of our own ------------------------------------------------------------------

@contextlib.contextmanager
def _redis_server(tmp_path: Path, *extra: str) -> Iterator[str]:
    """A Redis of our own (no persistence, allkeys-lru, 64 MB), stopped by its pid."""
    port = _free_port(26379)
    with open(tmp_path / "redis.log", "wb") as log:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path), *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "redis.log").read_text()) from None
                time.sleep(0.1)
        yield url
    finally:
        _stop(proc, signal.SIGTERM)


@pytest.fixture
def evicting_redis(tmp_path: Path) -> Iterator[str]:
    with _redis_server(tmp_path) as url:
        yield url


def test_doctor_evicting_and_emptied_redis_are_blocked(stack_settings: StackSettings, evicting_redis: str) -> None:
    checks = _by_label(doctor.check_redis(evicting_redis, stack_settings.kafka_bootstrap))
    assert checks["redis_policy"].level == "blocker" and "allkeys-lru" in checks["redis_policy"].detail
    assert "CONFIG SET maxmemory-policy noeviction" in checks["redis_policy"].fix
    assert checks["redis_persistence"].level == "warning"
    # The stack's consumer has committed offsets; this Redis holds no watermark: an emptied version store.
    emptied = checks["version_store"]
    assert emptied.level == "blocker" and ("--reset-offsets" in emptied.fix or "commit offset 0" in emptied.fix)
    code, out = _cli("--redis-url", evicting_redis)
    assert code == 2 and any(x.startswith("blocker  redis_policy") for x in out.splitlines())

    client = redis.Redis.from_url(evicting_redis)
    client.config_set("maxmemory-policy", "volatile-lru")
    client.set("{fw}:watermark", "0000000000000001", ex=3600)
    checks = _by_label(doctor.check_redis(evicting_redis, stack_settings.kafka_bootstrap))
    assert checks["redis_policy"].level == "warning"
    assert checks["redis_ttl"].level == "blocker" and checks["redis_ttl"].fix == "PERSIST {fw}:watermark"
    assert checks["version_store"].level == "ok"


def test_doctor_managed_redis_refusing_config_is_read_through_info(tmp_path: Path) -> None:
    """Managed Redis often disables CONFIG: the policy is read from INFO, and still blocks."""
    with _redis_server(tmp_path, "--rename-command", "CONFIG", "") as url:
        checks = _by_label(doctor.check_redis(url))
    assert checks["redis_policy"].level == "blocker" and "allkeys-lru" in checks["redis_policy"].detail
    assert checks["redis_persistence"].level == "warning" and "appendonly no" in checks["redis_persistence"].detail
    assert checks["version_store"].level == "skipped"


def test_doctor_consumer_and_gateway_refuse_an_evicting_redis_at_start(stack_settings: StackSettings,
                                                                       evicting_redis: str) -> None:
    """The consumer and the gateways check the version store's Redis at start: an allkeys-* policy
    is refused with its fix (exit 2), never run on until it silently drops every version."""
    s = stack_settings
    env = {**os.environ, "FRESHWIRE_REDIS_URL": evicting_redis, "FRESHWIRE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "FRESHWIRE_CDC_METRICS_PORT": str(_free_port(29108)), "FRESHWIRE_CDC_GROUP": "doctor-probe",
           "FRESHWIRE_JWT_SECRET": "4b1d" * 16, "FRESHWIRE_DEV_MODE": "0"}
    for argv in (["-m", "cdc"], ["-m", "gateway", "--port", str(_free_port(28080))]):
        out = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (argv, out.stderr[-2000:])
        assert "allkeys-lru" in out.stderr and "noeviction" in out.stderr, out.stderr[-2000:]


"""The stack's parts as processes: how each is prepared once, started, and known to be ready."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from cdc.effects import MAX_MESSAGE_BYTES
from cdc.rules import load_rules
from connectors import publication
from connectors.connect_config import worker_props
from connectors.procs import Proc, run_as
from connectors.stack_settings import REPO, StackSettings
from contract import topics
from gateway.settings import DEV_SECRET

PG_USER = "postgres"
MAX_BROKER_MESSAGE_BYTES = MAX_MESSAGE_BYTES + 64 * 1024  # a record batch's overhead around the largest record
JVM_BROKER_HEAP = ["-Xms256m", "-Xmx512m"]
JVM_CONNECT_HEAP = ["-Xms256m", "-Xmx640m"]
# Linux timer slack of every Connect JVM thread, in ns (the kernel's default is 50 µs). Debezium's task
# thread waits for records in ChangeEventQueue.poll() with a deadline counted in whole milliseconds and
# spins through the deadline's last millisecond; at poll.interval.ms 5 that spin was 8-11 % of a core
# at rest. With 2 ms of slack its timed waits end past that millisecond, so it sleeps instead. Waits
# that end on an event (a record queued, a socket readable) are not delayed; timed ones end up to 2 ms
# late (docs/tuning.md, bench/idle.py).
CONNECT_TIMER_SLACK_NS = 2_000_000
TOPIC_CHANGES, TOPIC_OPS, TOPIC_DLQ = topics.CHANGES, topics.OPS, topics.DLQ
RULES_FILE = REPO / "demo" / "rules.toml"


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return 200 <= int(response.status) < 300


# ---------------------------------------------------------------- PostgreSQL

def _traversable_by_everyone(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def pg_root(s: StackSettings) -> Path:
    """PostgreSQL's files; outside the state dir when the postgres user cannot reach it."""
    link = s.state_dir / "pg"
    if link.is_symlink():
        return link.resolve()
    if os.geteuid() != 0 or _traversable_by_everyone(s.state_dir):
        return link
    digest = hashlib.sha256(str(s.state_dir).encode()).hexdigest()[:10]
    target = Path("/var/tmp") / f"freshwire-pg-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    s.state_dir.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return target


def _chown_pg(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def pg_conf_lines(s: StackSettings, socket_dir: Path) -> list[str]:
    return [
        "listen_addresses = '127.0.0.1'",
        f"port = {s.pg_port}",
        f"unix_socket_directories = '{socket_dir}'",
        "wal_level = logical",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "max_slot_wal_keep_size = '2GB'",
        "hot_standby = on",
        "shared_preload_libraries = 'pg_stat_statements'",
        "synchronous_commit = on",
        "log_min_messages = warning",
    ]


def init_postgres(s: StackSettings) -> Path:
    """initdb once (as the postgres user, with a password for TCP logins); returns the data dir."""
    root = pg_root(s)
    data, run = root / "data", root / "run"
    for d in (root, run):
        d.mkdir(parents=True, exist_ok=True)
        _chown_pg(d)
    if (data / "PG_VERSION").exists():
        return data
    pwfile = root / "pwfile"
    pwfile.write_text("postgres\n")
    _chown_pg(pwfile)
    subprocess.run(
        [str(s.pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
         "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
        check=True, capture_output=True, preexec_fn=run_as(PG_USER),
    )
    pwfile.unlink()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write("\n# freshwire\n" + "\n".join(pg_conf_lines(s, run)) + "\n")
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")
    return data


def postgres_proc(s: StackSettings) -> Proc:
    data = init_postgres(s)
    return Proc(
        name="postgres",
        port=s.pg_port,
        argv=[str(s.pg_bin / "postgres"), "-D", str(data), "-p", str(s.pg_port)],
        log=s.logs_dir / "postgres.log",
        ready=lambda: _pg_ready(s, s.pg_port),
        user=PG_USER,
        ready_timeout_s=60,
    )


def _pg_ready(s: StackSettings, port: int) -> bool:
    result = subprocess.run(
        [str(s.pg_bin / "pg_isready"), "-h", s.host, "-p", str(port), "-t", "1"],
        capture_output=True,
    )
    return result.returncode == 0


def apply_schema(s: StackSettings) -> None:
    """Roles, the demo database and schema, and the publication of the rule tables; safe on every start."""
    import psycopg

    admin = f"postgresql://postgres:postgres@{s.host}:{s.pg_port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'app'").fetchone() is None:
            conn.execute("CREATE DATABASE app")
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        conn.execute((REPO / "demo" / "schema.sql").read_text().encode())
    publication.sync(s.pg_dsn, load_rules(RULES_FILE))  # exactly the rule tables, never FOR ALL TABLES


def postgres_setup(s: StackSettings) -> None:
    """After PostgreSQL is ready, on every start: schema, the doctor, and no idle replica slot."""
    apply_schema(s)
    preflight_postgres(s)  # the doctor: a blocker stops `make up` here, with its fix
    if not s.with_replica:
        # An unused replica slot would hold back the primary's xmin (hot_standby_feedback) and WAL:
        # every table would bloat while the stack runs without its replica.
        drop_replica_slot(s)


class PreflightError(RuntimeError):
    """The doctor found a blocker: the stack does not start on a database or Redis that would break."""


def _preflight(checks: list[Any], what: str) -> None:
    from connectors.doctor_checks import format_line

    blockers = [c for c in checks if c.level == "blocker"]
    for c in checks:
        if c.level == "warning":
            print(f"  doctor: {format_line(c)}", file=sys.stderr)
    if blockers:
        raise PreflightError(f"{what} is not fit for Freshwire (python -m connectors.doctor):\n"
                             + "\n".join(format_line(c) for c in blockers))


def preflight_postgres(s: StackSettings) -> None:
    """The doctor's PostgreSQL checks on the stack's own database, before anything reads from it."""
    from connectors.doctor import check_postgres

    _preflight(check_postgres(s.pg_dsn, load_rules(RULES_FILE)), "PostgreSQL")


def preflight_redis(s: StackSettings) -> None:
    from connectors.doctor import check_redis

    _preflight(check_redis(s.redis_url), "Redis")


REPLICA_SLOT = "freshwire_replica"


def replica_proc(s: StackSettings) -> Proc:
    """A streaming standby of the primary, cloned with pg_basebackup; its apply delay is a setting.

    It streams through a physical slot, so the primary keeps the WAL it needs while it is stopped (up
    to max_slot_wal_keep_size). A stack started without the replica drops that slot (it would hold
    back vacuum through hot_standby_feedback's xmin); a replica that can no longer catch up (no slot,
    or its slot lost past that bound) is cloned again instead of failing to start.
    """
    root = pg_root(s)
    data = root / "replica"
    slot = _replica_slot_state(s)
    if (data / "PG_VERSION").exists() and slot in ("", "lost"):
        shutil.rmtree(data)
    if not (data / "PG_VERSION").exists():
        if slot:
            drop_replica_slot(s)
        subprocess.run(
            [str(s.pg_bin / "pg_basebackup"), "-h", s.host, "-p", str(s.pg_port), "-U", "postgres",
             "-D", str(data), "-X", "stream", "--checkpoint=fast", "-C", "-S", REPLICA_SLOT],
            check=True, capture_output=True, preexec_fn=run_as(PG_USER), env={**os.environ, "PGPASSWORD": "postgres"},
        )
        (data / "standby.signal").touch()
        _chown_pg(data / "standby.signal")
    conninfo = f"host={s.host} port={s.pg_port} user=postgres password=postgres application_name=freshwire_replica"
    return Proc(
        name="replica",
        port=s.replica_port,
        argv=[str(s.pg_bin / "postgres"), "-D", str(data), "-p", str(s.replica_port),
              "-c", f"primary_conninfo={conninfo}", "-c", f"recovery_min_apply_delay={s.replica_delay_ms}ms",
              "-c", "hot_standby=on", "-c", "hot_standby_feedback=on", "-c", f"primary_slot_name={REPLICA_SLOT}"],
        log=s.logs_dir / "replica.log",
        ready=lambda: _pg_ready(s, s.replica_port) and _streaming(s),
        user=PG_USER,
        ready_timeout_s=60,
    )


def _replica_slot_state(s: StackSettings) -> str:
    """The replica slot's wal_status on the primary ("reserved", "extended", "unreserved", "lost"), "" if none."""
    import psycopg

    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT coalesce(wal_status, 'reserved') FROM pg_replication_slots WHERE slot_name = %s",
                           (REPLICA_SLOT,)).fetchone()
    return str(row[0]) if row else ""


def drop_replica_slot(s: StackSettings, slot: str = REPLICA_SLOT) -> None:
    """Drop the replica's slot unless a replica streams through it."""
    import psycopg

    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s AND NOT active", (slot,))


def _streaming(s: StackSettings) -> bool:
    import psycopg

    with psycopg.connect(s.pg_dsn, autocommit=True, connect_timeout=2) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'freshwire_replica'"
                           " AND state = 'streaming'").fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------- Redis

def redis_proc(s: StackSettings) -> Proc:
    data = s.state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    return Proc(
        name="redis",
        port=s.redis_port,
        # AOF on: a version acknowledged to the consumer survives a Redis process crash (the AOF is
        # written before replies and pubsub messages go out). appendfsync everysec by default: it
        # also survives a machine crash with `always`, at ~2 ms per release (docs/tuning.md).
        argv=[redis_server, "--port", str(s.redis_port), "--bind", s.host, "--dir", str(data),
              "--save", "", "--appendonly", "yes", "--appendfsync", s.redis_fsync, "--protected-mode", "yes"],
        log=s.logs_dir / "redis.log",
        ready=lambda: _redis_ping(s),
        ready_timeout_s=30,
    )


def _redis_ping(s: StackSettings) -> bool:
    return redis_pings(s.host, s.redis_port)


def redis_pings(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")


# ---------------------------------------------------------------- Kafka (KRaft) and Connect

LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
"""


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else (shutil.which("java") or "java")


def write_props(path: Path, props: dict[str, str | int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


def kafka_proc(s: StackSettings) -> Proc:
    root = s.state_dir / "kafka"
    props = root / "server.properties"
    write_props(props, {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.bootstrap.servers": f"{s.host}:{s.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(root / "data"),
        "num.partitions": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 5,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        # One record size limit everywhere (cdc/effects.py MAX_MESSAGE_BYTES, Connect's producer,
        # the consumer): a 5 MB value in a column the rules read still travels.
        "message.max.bytes": MAX_BROKER_MESSAGE_BYTES,
        "replica.fetch.max.bytes": MAX_BROKER_MESSAGE_BYTES,
        # At rest the controller appends a no-op record to the metadata log every 500 ms by default
        # (and the broker fetches and applies each one): one node needs no such liveness beat twice a
        # second (bench/idle.py, docs/tuning.md).
        "metadata.max.idle.interval.ms": 5000,
    })
    (root / "log4j2.properties").write_text(LOG4J2)
    classpath = f"{s.jars_dir}/*"
    if not (root / "data" / "meta.properties").exists():
        cluster_id = subprocess.run(
            [java_bin(), "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        subprocess.run(
            [java_bin(), "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone",
             "-t", cluster_id, "-c", str(props)],
            check=True, capture_output=True,
        )
    return Proc(
        name="kafka",
        port=s.kafka_port,
        argv=[java_bin(), *JVM_BROKER_HEAP, f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
              "-cp", classpath, "kafka.Kafka", str(props)],
        log=s.logs_dir / "kafka.log",
        ready=lambda: _kafka_ready(s),
        ready_timeout_s=90,
    )


def _kafka_ready(s: StackSettings) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap, "socket.timeout.ms": 1000, "log_level": 0})
    return len(admin.list_topics(timeout=1).brokers) > 0


def create_topics(s: StackSettings, replication_factor: int = 1) -> None:
    """One partition each: one total commit order in, one ordered log of batches out."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(t, num_partitions=1, replication_factor=replication_factor)
              for t in (TOPIC_CHANGES, TOPIC_OPS, TOPIC_DLQ) if t not in existing]
    for future in admin.create_topics(wanted).values() if wanted else []:
        future.result(timeout=30)


def slack_launcher(path: Path, slack_ns: int, java: str) -> Path:
    """A `java` at `path` that sets its own timer slack, which every thread of the JVM it then execs
    inherits, and runs the real `java` (unchanged where /proc/self/timerslack_ns is not writable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n# connectors/services.py: the JVM's timer slack (CONNECT_TIMER_SLACK_NS)\n"
                    f"{{ echo {int(slack_ns)} > /proc/self/timerslack_ns; }} 2>/dev/null\n"
                    f'exec {shlex.quote(java)} "$@"\n')
    path.chmod(0o755)
    return path


def connect_proc(s: StackSettings) -> Proc:
    root = s.state_dir / "connect"
    props = root / "connect.properties"
    write_props(props, worker_props(s.kafka_bootstrap, s.host, s.connect_port, s.plugins_dir, replication_factor=1))
    (root / "log4j2.properties").write_text(LOG4J2)
    # Named `java`, so the pid file's program name still matches the JVM's command line after the exec.
    java = slack_launcher(root / "bin" / "java", CONNECT_TIMER_SLACK_NS, java_bin())
    return Proc(
        name="connect",
        port=s.connect_port,
        argv=[str(java), *JVM_CONNECT_HEAP, f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
              "-cp", f"{s.jars_dir}/*", "org.apache.kafka.connect.cli.ConnectDistributed", str(props)],
        log=s.logs_dir / "connect.log",
        ready=lambda: _connect_ready(s),
        ready_timeout_s=180,
    )


def _connect_ready(s: StackSettings) -> bool:
    return connect_lists_debezium(s.connect_url)


def connect_lists_debezium(connect_url: str) -> bool:
    """A worker is ready when its REST API lists the Debezium Postgres connector among its plugins."""
    with urllib.request.urlopen(f"{connect_url}/connector-plugins", timeout=2) as r:
        plugins = json.load(r)
    return any(p.get("class") == "io.debezium.connector.postgresql.PostgresConnector" for p in plugins)


# ---------------------------------------------------------------- Freshwire's own processes

def app_env(s: StackSettings) -> dict[str, str]:
    secret = os.environ.get("FRESHWIRE_JWT_SECRET", DEV_SECRET)
    return {
        "FRESHWIRE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "FRESHWIRE_REDIS_URL": s.redis_url,
        "FRESHWIRE_RULES": str(RULES_FILE),
        "FRESHWIRE_CDC_METRICS_PORT": str(s.cdc_metrics_port),
        "FRESHWIRE_JWT_SECRET": secret,
        # The development secret is refused outside development mode (gateway/settings.py).
        **({"FRESHWIRE_DEV_MODE": "1"} if secret == DEV_SECRET else {}),
        "PYTHONUNBUFFERED": "1",
        "FRESHWIRE_PRIMARY_DSN": s.app_dsn,
        "FRESHWIRE_CONNECT_URL": s.connect_url,
        **({"FRESHWIRE_REPLICA_DSNS": s.replica_dsn} if s.with_replica and s.release_gating else {}),
    }


def cdc_proc(s: StackSettings) -> Proc:
    return Proc(
        name="cdc",
        port=s.cdc_metrics_port,
        argv=[sys.executable, "-m", "cdc"],
        env=app_env(s),
        cwd=REPO,
        log=s.logs_dir / "cdc.log",
        ready=lambda: http_ok(f"http://{s.host}:{s.cdc_metrics_port}/readyz"),
        ready_timeout_s=60,
    )


def demo_proc(s: StackSettings) -> Proc:
    env = {
        **app_env(s),
        "FRESHWIRE_DEMO_DSN": s.app_dsn,
        # Reading from a replica is only safe when releases wait for it (docs/consistency.md).
        "FRESHWIRE_DEMO_READ_DSN": s.replica_dsn if s.with_replica and s.release_gating else s.app_dsn,
        "FRESHWIRE_DEMO_GATEWAY_WS": f"ws://{s.host}:{s.gateway_port}/ws",
    }
    return Proc(
        name="demo",
        port=s.demo_port,
        argv=[sys.executable, "-m", "demo", "--host", s.host, "--port", str(s.demo_port)],
        env=env,
        cwd=REPO,
        log=s.logs_dir / "demo.log",
        ready=lambda: http_ok(f"http://{s.host}:{s.demo_port}/api/boards/1"),
        ready_timeout_s=60,
    )


def gateway_proc(s: StackSettings, name: str = "gateway", port: int | None = None) -> Proc:
    port = port or s.gateway_port
    return Proc(
        name=name,
        port=port,
        argv=[sys.executable, "-m", "gateway", "--host", s.host, "--port", str(port)],
        env=app_env(s),
        cwd=REPO,
        log=s.logs_dir / f"{name}.log",
        ready=lambda: http_ok(f"http://{s.host}:{port}/readyz"),
        ready_timeout_s=60,
    )

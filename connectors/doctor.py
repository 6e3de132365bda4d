"""Preflight: is this PostgreSQL (and Redis, and the consumer's Kafka offset) fit for Freshwire?

    python -m connectors.doctor --dsn postgresql://postgres:…@db/app --rules rules.toml \\
        [--redis-url redis://…] [--kafka-bootstrap host:9092] [--json]

One line per check (ok / warning / blocker / skipped) with the fix; exit 2 on any blocker, else 0.
It only reads: its PostgreSQL session is read-only (default_transaction_read_only), and it sends
Redis and Kafka nothing but reads (CONFIG GET, INFO, EXISTS, PTTL; metadata and committed offsets
without joining the group). A store that cannot be reached is one blocker line, never a traceback.
Every flag mirrors a FRESHWIRE_* variable. What each check means, and why its level: docs/doctor.md.

`check_postgres` and `check_redis` are the same checks for other code (the stack, the consumer and
the gateways at start); the verdicts themselves are pure, in connectors/doctor_checks.py and doctor_postgres.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
import redis

from cdc.errors import RulesError
from cdc.rules import Rules, load_rules
from connectors.doctor_checks import (
    DEFAULT_NAMES,
    Check,
    KafkaFacts,
    Names,
    RedisFacts,
    evaluate_redis,
    exit_code,
    format_line,
    rules_check,
)
from connectors.doctor_postgres import PgFacts, PublicationFacts, RoleFacts, SlotFacts, TableFacts, evaluate_postgres
from contract import topics
from contract.redis_layout import PREFIXES, VERSIONS, WATERMARK

CONNECT_TIMEOUT_S = 5  # PostgreSQL and Redis: connecting
STATEMENT_TIMEOUT_MS = 10_000  # each catalog query
REDIS_TIMEOUT_S = 5.0  # each Redis command
KAFKA_TIMEOUT_S = 10.0  # metadata, committed offsets, log start: each call
MAX_LABEL_WIDTH = 40

SETTINGS_SQL = """
SELECT current_database(), current_setting('wal_level'), current_setting('max_wal_senders')::int,
       current_setting('max_replication_slots')::int,
       (SELECT setting::int FROM pg_settings WHERE name = 'max_slot_wal_keep_size'),
       (SELECT count(*) FROM pg_stat_replication)::int,  -- every walsender holding a max_wal_senders place
       current_setting('server_version_num')::int
"""
SLOTS_SQL = """
WITH now AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn)
SELECT slot_name::text, slot_type, coalesce(plugin::text, ''), coalesce(database::text, ''), active,
       coalesce(wal_status, ''), coalesce(pg_wal_lsn_diff(now.lsn, restart_lsn), 0)::bigint,
       coalesce(pg_wal_lsn_diff(now.lsn, confirmed_flush_lsn), 0)::bigint
FROM pg_replication_slots, now
"""
ROLE_SQL = """
SELECT rolcanlogin, rolreplication, rolsuper, has_database_privilege(rolname, current_database(), 'CONNECT')
FROM pg_roles WHERE rolname = %s
"""
TABLE_SQL = """
SELECT c.oid, c.relkind::text, c.relreplident::text,
       ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped),
       ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary
             ORDER BY array_position(i.indkey::int2[], a.attnum)),
       ARRAY(SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s
"""
PRIVILEGES_SQL = """
SELECT has_table_privilege(%(role)s, %(oid)s::oid, 'SELECT')
         AND has_schema_privilege(%(role)s, (SELECT relnamespace FROM pg_class WHERE oid = %(oid)s::oid), 'USAGE'),
       has_table_privilege(%(role)s, %(oid)s::oid, 'INSERT') AND has_table_privilege(%(role)s, %(oid)s::oid, 'UPDATE')
"""
PUBLICATION_SQL = """
SELECT puballtables, pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = %s
"""
PUBLISHED_SQL = "SELECT schemaname || '.' || tablename, {attnames} FROM pg_publication_tables WHERE pubname = %s"
UNKEYED_SQL = """
SELECT p.schemaname || '.' || p.tablename FROM pg_publication_tables p
JOIN pg_namespace n ON n.nspname = p.schemaname JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename
WHERE p.pubname = %s AND (c.relreplident = 'n' OR (c.relreplident = 'd'
      AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))
ORDER BY 1
"""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- PostgreSQL -------------------------------------------------------------------------------------

def check_postgres(dsn: str, rules: Rules | None, names: Names = DEFAULT_NAMES) -> list[Check]:
    """Every PostgreSQL check, read-only; an unreachable server is one blocker."""
    options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, options=options) as conn:
            facts = gather_postgres(conn, rules or Rules({}), names)
            who = f"connected to {facts.database!r} as {conn.info.user!r}"
    except psycopg.Error as exc:
        return [Check("postgres", "blocker", f"cannot read the catalogs: {_first_line(exc)}",
                      "check --dsn (host, port, user, password, database; a superuser or the tables' owner)")]
    return [Check("postgres", "ok", who), *evaluate_postgres(facts, rules or Rules({}), names)]


def gather_postgres(conn: psycopg.Connection[Any], rules: Rules, names: Names) -> PgFacts:
    row = conn.execute(SETTINGS_SQL).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    database, wal_level, senders, slots, keep_mb, walsenders, version = row
    role_row = conn.execute(ROLE_SQL, (names.cdc_role,)).fetchone()
    role = RoleFacts() if role_row is None else RoleFacts(True, *(bool(v) for v in role_row))
    pub_row = conn.execute(PUBLICATION_SQL, (names.publication,)).fetchone()
    published: dict[str, frozenset[str] | None] = {}
    unkeyed: tuple[str, ...] = ()
    if pub_row is not None:
        attnames = "attnames" if version >= 150000 else "NULL::text[]"  # column lists arrived in PostgreSQL 15
        for name, cols in conn.execute(PUBLISHED_SQL.format(attnames=attnames), (names.publication,)):
            published[str(name)] = None if cols is None else frozenset(cols)
        unkeyed = tuple(str(r[0]) for r in conn.execute(UNKEYED_SQL, (names.publication,)))
    ops = ("insert", "update", "delete", "truncate")
    publishes = frozenset(op for op, on in zip(ops, pub_row[1:], strict=True) if on) if pub_row else frozenset()
    pub = PublicationFacts() if pub_row is None else PublicationFacts(True, bool(pub_row[0]), publishes, unkeyed)
    tables = {t: _table(conn, t, role.exists, names.cdc_role, published) for t in (*rules.tables, names.heartbeat)}
    slot_rows = conn.execute(SLOTS_SQL).fetchall()
    return PgFacts(database=str(database), wal_level=str(wal_level), max_wal_senders=int(senders),
                   max_replication_slots=int(slots), max_slot_wal_keep_mb=int(keep_mb),
                   walsenders_in_use=int(walsenders), slots=tuple(SlotFacts(*r) for r in slot_rows),
                   role=role, publication=pub, tables=tables)


def _table(conn: psycopg.Connection[Any], name: str, role_exists: bool, role: str,
           published: dict[str, frozenset[str] | None]) -> TableFacts:
    schema, _, table = name.partition(".")
    row = conn.execute(TABLE_SQL, (schema, table)).fetchone()
    if row is None:
        return TableFacts(name)
    oid, kind, identity, cols, pk, identity_index = row
    can_select = can_write = False
    if role_exists:
        privileges = conn.execute(PRIVILEGES_SQL, {"role": role, "oid": oid}).fetchone()
        can_select, can_write = (bool(privileges[0]), bool(privileges[1])) if privileges else (False, False)
    listed = published.get(name)
    return TableFacts(name, True, kind, frozenset(cols), tuple(pk), identity, tuple(identity_index),
                      can_select, can_write, published=name in published,
                      published_columns=None if listed is None or listed == frozenset(cols) else listed)


# --- Redis and Kafka --------------------------------------------------------------------------------

def check_redis(url: str, kafka_bootstrap: str | None = None, names: Names = DEFAULT_NAMES) -> list[Check]:
    """Every Redis check (and, with `kafka_bootstrap`, the version store against the consumer's
    committed offset), read-only; an unreachable Redis is one blocker."""
    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S,
                                      socket_connect_timeout=CONNECT_TIMEOUT_S)
        with client:
            client.ping()
            facts = gather_redis(client)
    except (redis.RedisError, OSError, ValueError) as exc:
        return [Check("redis", "blocker", f"cannot read Redis: {_first_line(exc)}", "check --redis-url")]
    kafka = None if not kafka_bootstrap else read_committed(kafka_bootstrap, names.cdc_group, names.cdc_topic)
    return [Check("redis", "ok", "reachable"), *evaluate_redis(facts, kafka, names)]


def gather_redis(client: redis.Redis) -> RedisFacts:
    policy: str | None = None
    appendonly: bool | None = None
    save: str | None = None
    error = ""
    try:
        conf = client.config_get("maxmemory-policy", "appendonly", "save")
        policy, save = conf.get("maxmemory-policy"), conf.get("save")
        appendonly = None if conf.get("appendonly") is None else conf.get("appendonly") == "yes"
    except redis.ResponseError as exc:  # managed Redis often refuses CONFIG; INFO says most of it
        error = f"CONFIG GET refused: {_first_line(exc)}"
        try:
            memory, persistence = client.info("memory"), client.info("persistence")
            policy = memory.get("maxmemory_policy")
            appendonly = None if "aof_enabled" not in persistence else bool(int(persistence["aof_enabled"]))
        except redis.ResponseError as exc2:
            error += f"; INFO refused: {_first_line(exc2)}"
    expiring = tuple(k for k in (VERSIONS, PREFIXES, WATERMARK) if int(client.pttl(k)) > 0)
    return RedisFacts(policy=policy, appendonly=appendonly, save=save, read_error=error,
                      watermark=bool(client.exists(WATERMARK)), expiring=expiring)


def read_committed(bootstrap: str, group: str, topic: str) -> KafkaFacts:
    """The group's committed offsets on `topic`, read without joining the group (no rebalance)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "log_level": 0, "socket.timeout.ms": int(KAFKA_TIMEOUT_S * 1000)})
    try:
        meta = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return KafkaFacts()
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        offsets = [tp.offset for tp in consumer.committed(parts, timeout=KAFKA_TIMEOUT_S) if tp.offset >= 0]
        starts = [consumer.get_watermark_offsets(tp, timeout=KAFKA_TIMEOUT_S)[0] for tp in parts]
        return KafkaFacts(committed=max(offsets) if offsets else None, log_start=max(starts, default=0))
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc  # a KafkaError: its str() is the readable part
        return KafkaFacts(error=error.str() if hasattr(error, "str") else _first_line(exc))
    finally:
        consumer.close()


# --- CLI --------------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> list[Check]:
    names = Names(cdc_role=args.cdc_role, publication=args.publication, slot=args.slot,
                  heartbeat=args.heartbeat_table, cdc_group=args.cdc_group, cdc_topic=args.cdc_topic)
    checks: list[Check] = []
    rules: Rules | None = None
    if args.dsn:
        try:
            rules = load_rules(args.rules) if args.rules else None
            checks.append(rules_check(rules, str(args.rules)))
        except RulesError as exc:
            checks.append(rules_check(None, str(args.rules), str(exc)))
        checks.extend(check_postgres(args.dsn, rules, names))
    if args.redis_url:
        checks.extend(check_redis(args.redis_url, args.kafka_bootstrap or None, names))
    return checks


def render(checks: Sequence[Check]) -> str:
    width = min(MAX_LABEL_WIDTH, max((len(c.label) for c in checks), default=0))
    return "\n".join(format_line(c, width) for c in checks)


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m connectors.doctor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=env("FRESHWIRE_PRIMARY_DSN", ""),
                   help="the primary, as a superuser or the tables' owner (FRESHWIRE_PRIMARY_DSN)")
    p.add_argument("--rules", type=Path, default=env("FRESHWIRE_RULES") or None, help="rules file (FRESHWIRE_RULES)")
    p.add_argument("--cdc-role", default=env("FRESHWIRE_CDC_ROLE", "freshwire_cdc"),
                   help="the role Debezium connects as (FRESHWIRE_CDC_ROLE)")
    p.add_argument("--publication", default=env("FRESHWIRE_PUBLICATION", "freshwire_pub"),
                   help="FRESHWIRE_PUBLICATION")
    p.add_argument("--slot", default=env("FRESHWIRE_SLOT_NAME", "freshwire"), help="FRESHWIRE_SLOT_NAME")
    p.add_argument("--heartbeat-table", default=env("FRESHWIRE_HEARTBEAT_TABLE", "public.freshwire_heartbeat"),
                   help="FRESHWIRE_HEARTBEAT_TABLE")
    p.add_argument("--redis-url", default=env("FRESHWIRE_REDIS_URL", ""), help="FRESHWIRE_REDIS_URL")
    p.add_argument("--kafka-bootstrap", default=env("FRESHWIRE_KAFKA_BOOTSTRAP", ""),
                   help="compare the version store with the consumer's offset (FRESHWIRE_KAFKA_BOOTSTRAP)")
    p.add_argument("--cdc-group", default=env("FRESHWIRE_CDC_GROUP", "freshwire-cdc"), help="FRESHWIRE_CDC_GROUP")
    p.add_argument("--cdc-topic", default=env("FRESHWIRE_CDC_TOPIC", topics.CHANGES), help="FRESHWIRE_CDC_TOPIC")
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.dsn and not args.redis_url:
        p.error("give --dsn, --redis-url, or both")
    checks = run(args)
    code = exit_code(checks)
    if args.json:
        print(json.dumps({"ok": code == 0, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render(checks))
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The doctor's PostgreSQL verdicts: catalog facts in, checks out; pure (connectors/doctor.py reads
the catalogs). Why each level: docs/doctor.md."""

from __future__ import annotations

from dataclasses import dataclass

from cdc.rules import Rules, TableRule
from connectors.capture import needed_columns
from connectors.doctor_checks import DEFAULT_NAMES, Check, Level, Names, ident, literal, merged, qualified, size

# A slot holding more WAL than this fraction of max_slot_wal_keep_size (or, when that is unlimited,
# than SLOT_RETAINED_WARN_BYTES) is a warning: the connector is behind or gone.
SLOT_RETAINED_WARN_FRACTION = 0.5
SLOT_RETAINED_WARN_BYTES = 1 << 30
SUGGESTED_SLOTS = 10  # the value fixes suggest for max_replication_slots / max_wal_senders, at least

IDENTITY_NAMES = {"d": "DEFAULT", "f": "FULL", "i": "USING INDEX", "n": "NOTHING"}
KIND_NAMES = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence", "c": "composite type",
              "i": "index", "I": "partitioned index", "t": "TOAST table"}


@dataclass(frozen=True, slots=True)
class TableFacts:
    name: str  # "schema.table"
    exists: bool = False
    kind: str = "r"  # pg_class.relkind
    columns: frozenset[str] = frozenset()
    primary_key: tuple[str, ...] = ()
    identity: str = "d"  # pg_class.relreplident: d default, f full, i index, n nothing
    identity_index: tuple[str, ...] = ()  # the replica identity index's columns (identity "i")
    cdc_select: bool = False  # SELECT on the table and USAGE on its schema
    cdc_write: bool = False  # INSERT and UPDATE (the heartbeat's action query)
    published: bool = False
    published_columns: frozenset[str] | None = None  # a publication column list; None: the whole row


@dataclass(frozen=True, slots=True)
class SlotFacts:
    name: str
    slot_type: str = "logical"
    plugin: str = "pgoutput"
    database: str = ""
    active: bool = False
    wal_status: str = "reserved"
    retained_bytes: int = 0  # WAL the server keeps for it (from restart_lsn)
    lag_bytes: int = 0  # not yet confirmed by the connector (from confirmed_flush_lsn)


@dataclass(frozen=True, slots=True)
class RoleFacts:
    exists: bool = False
    login: bool = False
    replication: bool = False
    superuser: bool = False
    connect: bool = False  # CONNECT on the database


@dataclass(frozen=True, slots=True)
class PublicationFacts:
    exists: bool = False
    all_tables: bool = False
    publishes: frozenset[str] = frozenset()  # of insert, update, delete, truncate
    unkeyed: tuple[str, ...] = ()  # published tables whose UPDATE and DELETE PostgreSQL refuses


@dataclass(frozen=True, slots=True)
class PgFacts:
    database: str
    wal_level: str
    max_wal_senders: int
    max_replication_slots: int
    max_slot_wal_keep_mb: int  # -1: unlimited
    walsenders_in_use: int
    slots: tuple[SlotFacts, ...]
    role: RoleFacts
    publication: PublicationFacts
    tables: dict[str, TableFacts]  # the rule tables and the heartbeat table


def evaluate_postgres(f: PgFacts, rules: Rules, n: Names = DEFAULT_NAMES) -> list[Check]:
    checks = [wal_level(f), replication_slots(f, n), wal_senders(f, n), slot_wal_keep_size(f), slot_state(f, n),
              cdc_role(f, n), cdc_select(f, rules, n)]
    for name, rule in rules.tables.items():
        checks.extend(table_checks(f.tables.get(name, TableFacts(name)), rule))
    checks.append(publication(f, rules, n))
    checks.append(heartbeat(f, rules, n))
    return checks


def wal_level(f: PgFacts) -> Check:
    if f.wal_level == "logical":
        return Check("wal_level", "ok", "logical")
    return Check("wal_level", "blocker", f"is {f.wal_level!r}; logical decoding needs 'logical'",
                 "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")


def _own_slot(f: PgFacts, n: Names) -> SlotFacts | None:
    return next((s for s in f.slots if s.name == n.slot), None)


def replication_slots(f: PgFacts, n: Names) -> Check:
    used, most = len(f.slots), f.max_replication_slots
    if _own_slot(f, n) is not None:
        return Check("replication_slots", "ok", f"{used} of {most} in use, {n.slot!r} among them")
    if used < most:
        return Check("replication_slots", "ok", f"{most - used} of {most} free for {n.slot!r}")
    return Check("replication_slots", "blocker", f"{used} of {most} in use: none free for the slot {n.slot!r}",
                 f"ALTER SYSTEM SET max_replication_slots = {max(SUGGESTED_SLOTS, used + 1)}; "
                 "-- then restart PostgreSQL")


def wal_senders(f: PgFacts, n: Names) -> Check:
    own = _own_slot(f, n)
    used, most = f.walsenders_in_use, f.max_wal_senders
    if own is not None and own.active:
        return Check("wal_senders", "ok", f"{used} of {most} in use, the connector's among them")
    if used < most:
        return Check("wal_senders", "ok", f"{most - used} of {most} free")
    return Check("wal_senders", "blocker", f"{used} of {most} in use: none free for the connector",
                 f"ALTER SYSTEM SET max_wal_senders = {max(SUGGESTED_SLOTS, used + 1)}; -- then restart PostgreSQL")


def slot_wal_keep_size(f: PgFacts) -> Check:
    if f.max_slot_wal_keep_mb >= 0:
        return Check("slot_wal_keep_size", "ok", size(f.max_slot_wal_keep_mb * 1024 * 1024))
    return Check("slot_wal_keep_size", "warning",
                 "unlimited (-1): a slot nobody reads keeps WAL until the disk is full",
                 "ALTER SYSTEM SET max_slot_wal_keep_size = '2GB'; SELECT pg_reload_conf();")


def slot_state(f: PgFacts, n: Names) -> Check:
    s = _own_slot(f, n)
    if s is None:
        return Check("slot", "ok", f"{n.slot!r} does not exist yet; Debezium creates it at its first start")
    drop = f"SELECT pg_drop_replication_slot({literal(n.slot)});"
    if s.slot_type != "logical" or s.plugin != "pgoutput" or s.database != f.database:
        what = s.plugin or s.slot_type
        return Check("slot", "blocker", f"{n.slot!r} is a {what} slot of database {s.database or '(none)'!r}; "
                     f"the connector needs a pgoutput slot of {f.database!r}",
                     f"{drop} -- or configure another slot.name (and --slot)")
    state = (f"{'active' if s.active else 'inactive'}, {s.wal_status or 'unknown'}, holds {size(s.retained_bytes)} "
             f"of WAL, {size(s.lag_bytes)} unconfirmed")
    if s.wal_status == "lost":
        return Check("slot", "blocker", f"{state}: PostgreSQL removed WAL the connector still needs",
                     f"{drop} -- then re-register the connector (a new snapshot) and flush clients (docs/cdc.md)")
    if s.wal_status == "unreserved":
        return Check("slot", "warning", f"{state}: past max_slot_wal_keep_size, the next checkpoint may lose it",
                     "start the connector (Kafka Connect) so it catches up")
    limit = (f.max_slot_wal_keep_mb * 1024 * 1024 * SLOT_RETAINED_WARN_FRACTION if f.max_slot_wal_keep_mb >= 0
             else SLOT_RETAINED_WARN_BYTES)
    if s.retained_bytes >= limit:
        return Check("slot", "warning", f"{state}: the connector is behind or gone",
                     f"start or restart the connector; if it is gone for good: {drop}")
    return Check("slot", "ok", state)


def cdc_role(f: PgFacts, n: Names) -> Check:
    r, role = f.role, ident(n.cdc_role)
    if not r.exists:
        return Check("cdc_role", "blocker", f"role {n.cdc_role!r} does not exist",
                     f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD '...';")
    findings: list[tuple[Level, str, str]] = []
    if not r.login:
        findings.append(("blocker", "cannot log in", f"ALTER ROLE {role} LOGIN;"))
    if not (r.replication or r.superuser):
        findings.append(("blocker", "lacks REPLICATION: it cannot open a replication connection",
                         f"ALTER ROLE {role} REPLICATION;"))
    if not r.connect:
        findings.append(("blocker", f"lacks CONNECT on database {f.database!r}",
                         f"GRANT CONNECT ON DATABASE {ident(f.database)} TO {role};"))
    if r.superuser:
        findings.append(("warning", "is a superuser: Debezium needs only REPLICATION and SELECT",
                         f"ALTER ROLE {role} NOSUPERUSER REPLICATION;"))
    return merged("cdc_role", findings, f"{n.cdc_role} has LOGIN, REPLICATION and CONNECT on {f.database!r}")


def cdc_select(f: PgFacts, rules: Rules, n: Names) -> Check:
    if not f.role.exists:
        return Check("cdc_select", "skipped", f"role {n.cdc_role!r} does not exist")
    if not rules.tables:
        return Check("cdc_select", "skipped", "no rules file: no rule tables to check")
    present = [f.tables[t] for t in rules.tables if t in f.tables and f.tables[t].exists]
    missing = sorted(t.name for t in present if not t.cdc_select)
    if not missing:
        return Check("cdc_select", "ok", f"SELECT on all {len(present)} rule tables")
    schemas = sorted({t.partition(".")[0] for t in missing})
    role = ident(n.cdc_role)
    fix = " ".join(f"GRANT USAGE ON SCHEMA {ident(s)} TO {role};" for s in schemas)
    fix += f" GRANT SELECT ON {', '.join(qualified(t) for t in missing)} TO {role};"
    return Check("cdc_select", "blocker", f"{n.cdc_role} cannot read {', '.join(missing)}: Debezium's snapshot "
                 "and schema discovery need SELECT (and USAGE on the schema)", fix)


def table_checks(t: TableFacts, rule: TableRule) -> list[Check]:
    """The table itself, its replica identity, and the columns its rule reads."""
    q = qualified(t.name)
    if not t.exists:
        return [Check("table", "blocker", "no such table",
                      f"create it, or remove [tables.\"{t.name}\"] from the rules file", t.name)]
    if t.kind not in ("r", "p"):
        return [Check("table", "blocker", f"is a {KIND_NAMES.get(t.kind, t.kind)}, not a table: it has no changes",
                      f"remove [tables.\"{t.name}\"] from the rules file", t.name)]
    return [_keys(t, q), replica_identity(t, rule), columns(t, rule)]


def _keys(t: TableFacts, q: str) -> Check:
    pk = ", ".join(t.primary_key)
    identity = IDENTITY_NAMES.get(t.identity, t.identity)
    if t.identity == "n" or (t.identity == "d" and not t.primary_key):
        fix = (f"ALTER TABLE {q} REPLICA IDENTITY {'DEFAULT' if pk else 'FULL'};" if t.identity == "n" and pk
               else f"ALTER TABLE {q} ADD PRIMARY KEY (...); -- or: ALTER TABLE {q} REPLICA IDENTITY FULL;")
        return Check("table", "blocker", f"{'primary key (' + pk + ')' if pk else 'no primary key'} and REPLICA "
                     f"IDENTITY {identity}: once published, PostgreSQL refuses its UPDATEs and DELETEs", fix, t.name)
    if not pk:
        return Check("table", "warning", f"no primary key (REPLICA IDENTITY {identity} identifies rows): "
                     "Debezium's records carry no key", f"ALTER TABLE {q} ADD PRIMARY KEY (...);", t.name)
    return Check("table", "ok", f"primary key ({pk})", subject=t.name)


def identity_columns(t: TableFacts) -> frozenset[str]:
    """The columns an update's old row and a delete's row carry."""
    if t.identity == "f":
        return t.columns
    if t.identity == "i":
        return frozenset(t.identity_index)
    return frozenset(t.primary_key) if t.identity == "d" else frozenset()


def replica_identity(t: TableFacts, rule: TableRule) -> Check:
    identity = f"REPLICA IDENTITY {IDENTITY_NAMES.get(t.identity, t.identity)}"
    if rule.outbox:
        return Check("replica_identity", "ok", f"{identity}; an outbox is read from inserts, the new row suffices",
                     subject=t.name)
    carried = identity_columns(t)
    in_keys = {c for tpl in rule.templates for c in tpl.fields if c in t.columns}
    stale = sorted(in_keys - carried)
    over = sorted(c for c in (rule.columns or ()) if c in t.columns and c not in in_keys and c not in carried)
    fix = f"ALTER TABLE {qualified(t.name)} REPLICA IDENTITY FULL;"
    if stale:
        return Check("replica_identity", "blocker", f"{identity}: the old row of an update lacks {', '.join(stale)}, "
                     "which templates read: a row moving off a key leaves that key's subscribers stale", fix, t.name)
    if over:
        return Check("replica_identity", "warning", f"{identity}: the old row lacks {', '.join(over)} (`columns`), "
                     "so every update counts as a change: extra invalidations, never stale", fix, t.name)
    return Check("replica_identity", "ok", f"{identity}: the old row carries every column the rule reads",
                 subject=t.name)


def columns(t: TableFacts, rule: TableRule) -> Check:
    read = needed_columns(rule)
    missing = [c for c in read if c not in t.columns]
    if missing:
        adds = " ".join(f"ALTER TABLE {qualified(t.name)} ADD COLUMN {ident(c)} ...;" for c in missing)
        return Check("columns", "blocker", f"the rule reads {', '.join(missing)}, which the table lacks: those keys "
                     "never render (only their literal prefix is invalidated)",
                     f"correct [tables.\"{t.name}\"] in the rules file, or {adds}", t.name)
    return Check("columns", "ok", f"all {len(read)} columns the rule reads exist", subject=t.name)


def publication(f: PgFacts, rules: Rules, n: Names) -> Check:
    p, pub = f.publication, ident(n.publication)
    tables = ", ".join(qualified(t) for t in sorted(rules.tables)) or "..."
    sync = "-- or: python -m connectors.publication --dsn ... --rules ..."
    if not p.exists:
        return Check("publication", "blocker", f"{n.publication!r} does not exist (the connector never creates it)",
                     f"CREATE PUBLICATION {pub} FOR TABLE {tables}; {sync}")
    findings: list[tuple[Level, str, str]] = []
    lacking = [op for op in ("insert", "update", "delete", "truncate") if op not in p.publishes]
    if lacking:
        findings.append(("blocker", f"does not publish {', '.join(lacking)}: those changes never invalidate",
                         f"ALTER PUBLICATION {pub} SET (publish = 'insert, update, delete, truncate');"))
    present = [f.tables[t] for t in sorted(rules.tables) if t in f.tables and f.tables[t].exists]
    uncovered = [t.name for t in present if not t.published]
    if uncovered:
        findings.append(("blocker", f"lacks {', '.join(uncovered)}: their changes never reach Kafka",
                         f"ALTER PUBLICATION {pub} ADD TABLE {', '.join(qualified(t) for t in uncovered)}; {sync}"))
    for t in present:
        if t.published and t.published_columns is not None:
            cut = sorted(set(needed_columns(rules.tables[t.name])) - t.published_columns)
            if cut or t.identity == "f":
                why = f"omits {', '.join(cut)}" if cut else "with REPLICA IDENTITY FULL makes updates fail"
                findings.append(("blocker", f"column list of {t.name} {why}",
                                 f"ALTER PUBLICATION {pub} SET TABLE {tables};"))
    if p.all_tables:
        findings.append(("warning", "is FOR ALL TABLES: every table without a primary key or replica identity "
                         "refuses UPDATE and DELETE"
                         + (f" (now: {', '.join(p.unkeyed)})" if p.unkeyed else ""),
                         f"BEGIN; DROP PUBLICATION {pub}; CREATE PUBLICATION {pub} FOR TABLE {tables}; COMMIT; {sync}"))
    elif p.unkeyed:
        findings.append(("warning", f"holds {', '.join(p.unkeyed)}, whose UPDATE and DELETE PostgreSQL refuses", ""))
    ok = f"covers {len(present)} rule tables" if rules.tables else "exists (no rules file: coverage not checked)"
    return merged("publication", findings, ok)


def heartbeat(f: PgFacts, rules: Rules, n: Names) -> Check:
    h, q, role = f.tables.get(n.heartbeat, TableFacts(n.heartbeat)), qualified(n.heartbeat), ident(n.cdc_role)
    if not h.exists:
        return Check("heartbeat", "blocker", f"{n.heartbeat} does not exist: Debezium's heartbeat query fails",
                     f"CREATE TABLE {q} (id int PRIMARY KEY, beat_at timestamptz NOT NULL); "
                     f"GRANT SELECT, INSERT, UPDATE ON {q} TO {role};")
    findings: list[tuple[Level, str, str]] = []
    if h.primary_key != ("id",):
        findings.append(("blocker", "needs PRIMARY KEY (id): the heartbeat query upserts ON CONFLICT (id)",
                         f"ALTER TABLE {q} ADD PRIMARY KEY (id);"))
    if f.role.exists and not h.cdc_write:
        findings.append(("blocker", f"{n.cdc_role} cannot INSERT and UPDATE it (the heartbeat query runs as that role)",
                         f"GRANT SELECT, INSERT, UPDATE ON {q} TO {role};"))
    if rules.tables and n.heartbeat not in rules.tables:
        findings.append(("warning", "not in the rules file: Debezium skips it, and a quiet database never moves "
                         "the watermark", f"add [tables.\"{n.heartbeat}\"] keys = [] to the rules file"))
    elif not h.published:
        findings.append(("warning", "not published: a quiet database never moves the watermark",
                         f"ALTER PUBLICATION {ident(n.publication)} ADD TABLE {q};"))
    return merged("heartbeat", findings, f"{n.heartbeat} exists, {n.cdc_role} may write it")

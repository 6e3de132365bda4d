"""The doctor's pure core: facts in, one `Check` per question out; no I/O and no clock.

connectors/doctor.py gathers the facts (read-only) and prints the checks. Every check that is not ok
carries its fix: SQL, a command, or an edit of the rules file. Levels: a *blocker* means Freshwire
cannot run, or could tell a client that stale data is fresh; a *warning* means it runs correctly but
wastes work, lacks headroom, or an operator should look (docs/doctor.md says why each level). This
module holds the shared types and the Redis and Kafka verdicts; connectors/doctor_postgres.py the
PostgreSQL ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cdc.errors import RulesError
from cdc.rules import Rules
from connectors.capture import capture_settings
from contract import topics
from contract.redis_health import evicts_version_store
from contract.redis_layout import PREFIXES, VERSIONS, WATERMARK

Level = Literal["ok", "skipped", "warning", "blocker"]
SEVERITY: dict[Level, int] = {"ok": 0, "skipped": 0, "warning": 1, "blocker": 2}
PLAIN_SQL = re.compile(r"^[a-z_][a-z0-9_$]*$")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""
    subject: str = ""  # the table a per-table check is about

    @property
    def label(self) -> str:
        return f"{self.name} {self.subject}" if self.subject else self.name


@dataclass(frozen=True, slots=True)
class Names:
    """What the connector and the consumer are configured with (connectors/freshwire-postgres.json)."""

    cdc_role: str = "freshwire_cdc"
    publication: str = "freshwire_pub"
    slot: str = "freshwire"
    heartbeat: str = "public.freshwire_heartbeat"
    cdc_group: str = "freshwire-cdc"
    cdc_topic: str = topics.CHANGES


DEFAULT_NAMES = Names()


@dataclass(frozen=True, slots=True)
class RedisFacts:
    policy: str | None = None  # maxmemory-policy; None when it cannot be read
    appendonly: bool | None = None
    save: str | None = None  # RDB save points ("" = none); None when unknown
    read_error: str = ""  # why a setting could not be read
    watermark: bool = False  # {fw}:watermark exists
    expiring: tuple[str, ...] = ()  # Freshwire keys that carry a TTL


@dataclass(frozen=True, slots=True)
class KafkaFacts:
    committed: int | None = None  # the group's highest committed offset on the topic; None: nothing committed
    log_start: int = 0  # the lowest offset the topic still holds
    error: str = ""


def worst(checks: Iterable[Check]) -> Level:
    return max((c.level for c in checks), key=SEVERITY.__getitem__, default="ok")


def exit_code(checks: Iterable[Check]) -> int:
    """2 when any check is a blocker, else 0."""
    return 2 if worst(checks) == "blocker" else 0


def format_line(check: Check, width: int = 20) -> str:
    line = f"{check.level:<8} {check.label:<{width}} {check.detail}"
    return f"{line}   fix: {check.fix}" if check.fix else line


def ident(name: str) -> str:
    """`name` as an SQL identifier, quoted only when it needs to be."""
    return name if PLAIN_SQL.match(name) else '"' + name.replace('"', '""') + '"'


def qualified(table: str) -> str:
    schema, _, name = table.partition(".")
    return f"{ident(schema)}.{ident(name)}"


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def merged(name: str, findings: list[tuple[Level, str, str]], ok_detail: str, subject: str = "") -> Check:
    """One check from several findings (level, detail, fix): the worst level, every detail and fix."""
    if not findings:
        return Check(name, "ok", ok_detail, subject=subject)
    level = worst(Check(name, lv, "") for lv, _, _ in findings)
    detail = "; ".join(d for _, d, _ in findings)
    fix = " ".join(dict.fromkeys(f for _, _, f in findings if f))
    return Check(name, level, detail, fix, subject)


def rules_check(rules: Rules | None, source: str, error: str = "") -> Check:
    if error:
        return Check("rules", "blocker", error, f"correct {source}")
    if rules is None:
        return Check("rules", "skipped", "no --rules: rule tables, columns and coverage not checked")
    try:
        capture_settings(rules)
    except RulesError as exc:
        return Check("rules", "blocker", str(exc), f"correct {source}")
    return Check("rules", "ok", f"{len(rules.tables)} tables in {source}")


# --- Redis and Kafka --------------------------------------------------------------------------------

def evaluate_redis(r: RedisFacts, kafka: KafkaFacts | None, n: Names = DEFAULT_NAMES) -> list[Check]:
    return [redis_policy(r), redis_ttl(r), redis_persistence(r), version_store(r, kafka, n)]


NOEVICTION = "CONFIG SET maxmemory-policy noeviction (and keep it: redis.conf, or the provider's parameter group)"


def redis_policy(r: RedisFacts) -> Check:
    p = r.policy
    if p is None:
        return Check("redis_policy", "warning", f"cannot read maxmemory-policy ({r.read_error}); it must be "
                     "noeviction", "check maxmemory-policy in the provider's settings")
    if p == "noeviction":
        return Check("redis_policy", "ok", "noeviction: a full Redis refuses writes (the consumer retries), "
                     "it never drops versions")
    if evicts_version_store(p):
        return Check("redis_policy", "blocker", f"{p}: under memory pressure Redis evicts {VERSIONS} whole, and "
                     "resuming clients are told nothing changed", NOEVICTION)
    if p.startswith("volatile-"):
        return Check("redis_policy", "warning", f"{p} evicts only keys with a TTL: never the version store, but "
                     "read-your-writes markers ({fw}:tx:*) may go early and their awaits time out", NOEVICTION)
    return Check("redis_policy", "warning", f"unknown policy {p!r}", NOEVICTION)


def redis_ttl(r: RedisFacts) -> Check:
    if r.expiring:
        return Check("redis_ttl", "blocker", f"{', '.join(r.expiring)} carry a TTL: they expire (and volatile "
                     "policies may evict them)", " ".join(f"PERSIST {k}" for k in r.expiring))
    return Check("redis_ttl", "ok", f"{VERSIONS}, {PREFIXES} and {WATERMARK} carry no TTL")


def redis_persistence(r: RedisFacts) -> Check:
    aof = "CONFIG SET appendonly yes (and in redis.conf, or the provider's settings)"
    if r.appendonly is None:
        return Check("redis_persistence", "warning", f"cannot read appendonly ({r.read_error})",
                     "make sure the provider persists Redis (AOF)")
    if r.appendonly:
        return Check("redis_persistence", "ok", "appendonly yes")
    if r.save:
        return Check("redis_persistence", "warning", f"RDB snapshots only (save {r.save!r}): a crash rolls the "
                     "version store back to the last snapshot", aof)
    if r.save is None:
        return Check("redis_persistence", "warning", "appendonly no (RDB snapshots unknown): a crash loses the "
                     "version store's last writes, or all of it", aof)
    return Check("redis_persistence", "warning", "no persistence: a restart empties the version store "
                 "(version_store then blocks)", aof)


def version_store(r: RedisFacts, kafka: KafkaFacts | None, n: Names) -> Check:
    if kafka is None:
        return Check("version_store", "skipped", "no --kafka-bootstrap: not compared with the consumer's offset")
    if kafka.error:
        return Check("version_store", "warning", f"cannot read {n.cdc_group}'s offset on {n.cdc_topic}: "
                     f"{kafka.error}", "check --kafka-bootstrap")
    if not kafka.committed:
        return Check("version_store", "ok", f"{n.cdc_group} has committed nothing on {n.cdc_topic} yet")
    if r.watermark:
        return Check("version_store", "ok", f"{WATERMARK} present, {n.cdc_group} at offset {kafka.committed}")
    reset = (f"stop the consumer, then: kafka-consumer-groups.sh --bootstrap-server ... --group {n.cdc_group} "
             f"--topic {n.cdc_topic} --reset-offsets --to-earliest --execute")
    if kafka.log_start > 0:
        reset = (f"stop the consumer and commit offset 0 for {n.cdc_group} on {n.cdc_topic} (the log starts at "
                 f"{kafka.log_start}: the consumer then replays it and flushes every key, docs/cdc.md)")
    return Check("version_store", "blocker", f"{WATERMARK} is missing but {n.cdc_group} committed offset "
                 f"{kafka.committed}: Redis was emptied, and resuming clients would be told nothing changed", reset)

"""connectors.doctor_checks and doctor_postgres: each check's verdict from hand-made facts, and the
doctor's shells failing as one blocker line when a store cannot be reached."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

import pytest
from debezium_json import DEMO_RULES
from hypothesis import given
from hypothesis import strategies as st

from cdc.rules import Rules, load_rules, parse_rules
from connectors import doctor
from connectors.capture import needed_columns
from connectors.doctor_checks import (
    Check,
    KafkaFacts,
    Level,
    RedisFacts,
    evaluate_redis,
    exit_code,
    format_line,
    rules_check,
)
from connectors.doctor_postgres import (
    PgFacts,
    PublicationFacts,
    RoleFacts,
    SlotFacts,
    TableFacts,
    evaluate_postgres,
)

RULES = load_rules(DEMO_RULES)
HEARTBEAT = "public.freshwire_heartbeat"


def _table(name: str, rules: Rules = RULES, **over: Any) -> TableFacts:
    rule = rules.tables.get(name)
    cols = frozenset({"id", "beat_at", *(needed_columns(rule) if rule else ())})
    base = TableFacts(name, exists=True, columns=cols, primary_key=("id",), identity="f", cdc_select=True,
                      cdc_write=True, published=True)
    return replace(base, **over)


def _facts(rules: Rules = RULES, **over: Any) -> PgFacts:
    """Facts of a database fit for `rules`: the stack's, with a rule-table publication."""
    tables = {t: _table(t, rules) for t in (*rules.tables, HEARTBEAT)}
    base = PgFacts(database="app", wal_level="logical", max_wal_senders=10, max_replication_slots=10,
                   max_slot_wal_keep_mb=2048, walsenders_in_use=2,
                   slots=(SlotFacts("freshwire", database="app", active=True, retained_bytes=4096),),
                   role=RoleFacts(True, login=True, replication=True, connect=True),
                   publication=PublicationFacts(True, False, frozenset({"insert", "update", "delete", "truncate"})),
                   tables=tables)
    return replace(base, **over)


def _with_table(facts: PgFacts, name: str, **over: Any) -> PgFacts:
    return replace(facts, tables={**facts.tables, name: replace(facts.tables[name], **over)})


def _one(checks: list[Check], name: str, subject: str = "") -> Check:
    found = [c for c in checks if c.name == name and c.subject == subject]
    assert len(found) == 1, f"{name} {subject}: {found}"
    return found[0]


def _pg(facts: PgFacts, name: str, subject: str = "", rules: Rules = RULES) -> Check:
    return _one(evaluate_postgres(facts, rules), name, subject)


def _rules(text: str) -> Rules:
    return parse_rules(tomllib.loads(text))


def test_doctor_healthy_database_has_only_ok_checks() -> None:
    checks = evaluate_postgres(_facts(), RULES)
    assert {c.level for c in checks} == {"ok"}, [c for c in checks if c.level != "ok"]
    assert exit_code(checks) == 0


def test_doctor_wal_level_replica_is_a_blocker_with_the_alter_system_fix() -> None:
    check = _pg(_facts(wal_level="replica"), "wal_level")
    assert check.level == "blocker" and "'replica'" in check.detail
    assert check.fix == "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL"


def test_doctor_replication_slots_none_free_blocks_only_without_an_existing_slot() -> None:
    full = _facts(max_replication_slots=2, slots=(SlotFacts("a"), SlotFacts("b")))
    check = _pg(full, "replication_slots")
    assert check.level == "blocker" and "max_replication_slots = 10" in check.fix
    assert _pg(_facts(max_replication_slots=1), "replication_slots").level == "ok"  # ours exists already


def test_doctor_wal_senders_none_free_blocks_unless_the_connector_streams() -> None:
    idle = (SlotFacts("freshwire", database="app", active=False),)
    assert _pg(_facts(max_wal_senders=2, walsenders_in_use=2, slots=idle), "wal_senders").level == "blocker"
    assert _pg(_facts(max_wal_senders=2, walsenders_in_use=2), "wal_senders").level == "ok"
    assert _pg(_facts(max_wal_senders=3, walsenders_in_use=2, slots=idle), "wal_senders").level == "ok"


def test_doctor_unlimited_slot_wal_keep_size_is_a_warning() -> None:
    check = _pg(_facts(max_slot_wal_keep_mb=-1), "slot_wal_keep_size")
    assert check.level == "warning" and "max_slot_wal_keep_size" in check.fix


@pytest.mark.parametrize(("slot", "level"), [
    (SlotFacts("freshwire", database="app", wal_status="lost"), "blocker"),
    (SlotFacts("freshwire", database="app", wal_status="unreserved"), "warning"),
    (SlotFacts("freshwire", database="app", retained_bytes=1024 * 1024 * 1024), "warning"),  # half of 2 GB
    (SlotFacts("freshwire", database="app", retained_bytes=1024), "ok"),
    (SlotFacts("freshwire", database="other"), "blocker"),
    (SlotFacts("freshwire", plugin="decoderbufs", database="app"), "blocker"),
    (SlotFacts("freshwire", slot_type="physical", plugin="", database=""), "blocker"),
    (SlotFacts("someone_else", database="app", wal_status="lost"), "ok"),  # not ours: Debezium creates ours
])
def test_doctor_slot_state_levels(slot: SlotFacts, level: Level) -> None:
    check = _pg(_facts(slots=(slot,)), "slot")
    assert check.level == level, check
    if level == "blocker":
        assert "pg_drop_replication_slot('freshwire')" in check.fix


def test_doctor_slot_without_keep_size_warns_past_a_fixed_bound() -> None:
    slot = SlotFacts("freshwire", database="app", retained_bytes=2 << 30)
    assert _pg(_facts(max_slot_wal_keep_mb=-1, slots=(slot,)), "slot").level == "warning"


@pytest.mark.parametrize(("role", "level", "fix"), [
    (RoleFacts(), "blocker", "CREATE ROLE freshwire_cdc LOGIN REPLICATION"),
    (RoleFacts(True, login=True, replication=False, connect=True), "blocker", "ALTER ROLE freshwire_cdc REPLICATION;"),
    (RoleFacts(True, login=False, replication=True, connect=True), "blocker", "ALTER ROLE freshwire_cdc LOGIN;"),
    (RoleFacts(True, login=True, replication=True, connect=False), "blocker", "GRANT CONNECT ON DATABASE app"),
    (RoleFacts(True, login=True, superuser=True, connect=True), "warning", "NOSUPERUSER"),
])
def test_doctor_cdc_role_levels(role: RoleFacts, level: Level, fix: str) -> None:
    check = _pg(_facts(role=role), "cdc_role")
    assert check.level == level and fix in check.fix


def test_doctor_missing_select_is_a_blocker_with_one_grant() -> None:
    facts = _with_table(_with_table(_facts(), "public.cards", cdc_select=False), "public.boards", cdc_select=False)
    check = _pg(facts, "cdc_select")
    assert check.level == "blocker" and "public.boards, public.cards" in check.detail
    assert check.fix == ("GRANT USAGE ON SCHEMA public TO freshwire_cdc; "
                         "GRANT SELECT ON public.boards, public.cards TO freshwire_cdc;")


def test_doctor_missing_rule_table_is_a_blocker_and_skips_its_other_checks() -> None:
    facts = replace(_facts(), tables={**_facts().tables, "public.cards": TableFacts("public.cards")})
    checks = evaluate_postgres(facts, RULES)
    assert _one(checks, "table", "public.cards").level == "blocker"
    assert not [c for c in checks if c.subject == "public.cards" and c.name != "table"]


@pytest.mark.parametrize(("over", "level"), [
    ({"primary_key": (), "identity": "d"}, "blocker"),  # published, its UPDATE and DELETE fail
    ({"identity": "n"}, "blocker"),
    ({"primary_key": (), "identity": "f"}, "warning"),
    ({"kind": "v"}, "blocker"),
])
def test_doctor_table_key_levels(over: dict[str, object], level: Level) -> None:
    assert _pg(_with_table(_facts(), "public.chaos_items", **over), "table", "public.chaos_items").level == level


def test_doctor_template_reading_a_non_key_column_needs_replica_identity_full() -> None:
    check = _pg(_with_table(_facts(), "public.cards", identity="d"), "replica_identity", "public.cards")
    assert check.level == "blocker" and "board_id" in check.detail and "tenant_id" in check.detail
    assert check.fix == "ALTER TABLE public.cards REPLICA IDENTITY FULL;"


def test_doctor_only_columns_reading_non_key_columns_is_a_warning() -> None:
    rules = _rules('[tables."public.notes"]\nkeys = ["note:{id}"]\ncolumns = ["body"]\n')
    facts = _with_table(_facts(rules), "public.notes", identity="d")
    check = _pg(facts, "replica_identity", "public.notes", rules)
    assert check.level == "warning" and "body" in check.detail


def test_doctor_replica_identity_index_covering_the_template_is_ok() -> None:
    rules = _rules('[tables."public.notes"]\nkeys = ["t:{tenant_id}:note:{id}"]\n')
    facts = _with_table(_facts(rules), "public.notes", identity="i", identity_index=("tenant_id", "id"))
    assert _pg(facts, "replica_identity", "public.notes", rules).level == "ok"


def test_doctor_outbox_and_key_only_tables_need_no_full_identity() -> None:
    facts = _with_table(_with_table(_facts(), "public.outbox", identity="d"), "public.idempotency_keys",
                        identity="d", primary_key=("key",))
    assert _pg(facts, "replica_identity", "public.outbox").level == "ok"
    assert _pg(facts, "replica_identity", "public.idempotency_keys").level == "ok"


def test_doctor_unknown_template_column_is_a_blocker_naming_it() -> None:
    rules = _rules('[tables."public.notes"]\nkeys = ["note:{id}", "colour:{colour}"]\n')
    facts = _with_table(_facts(rules), "public.notes", columns=frozenset({"id", "body"}))
    checks = evaluate_postgres(facts, rules)
    check = _one(checks, "columns", "public.notes")
    assert check.level == "blocker" and "colour" in check.detail and "ADD COLUMN colour" in check.fix
    assert _one(checks, "replica_identity", "public.notes").level == "ok"  # reported once, as a column


def test_doctor_missing_publication_is_a_blocker_with_create_for_the_rule_tables() -> None:
    check = _pg(_facts(publication=PublicationFacts()), "publication")
    assert check.level == "blocker"
    assert check.fix.startswith("CREATE PUBLICATION freshwire_pub FOR TABLE public.boards, public.cards")


def test_doctor_rule_table_outside_the_publication_is_a_blocker() -> None:
    check = _pg(_with_table(_facts(), "public.documents", published=False), "publication")
    assert check.level == "blocker" and "public.documents" in check.detail
    assert "ALTER PUBLICATION freshwire_pub ADD TABLE public.documents;" in check.fix


def test_doctor_for_all_tables_publication_is_a_warning_naming_unkeyed_tables() -> None:
    pub = replace(_facts().publication, all_tables=True, unkeyed=("public.logs",))
    check = _pg(_facts(publication=pub), "publication")
    assert check.level == "warning" and "public.logs" in check.detail and "DROP PUBLICATION" in check.fix


def test_doctor_publication_without_truncate_is_a_blocker() -> None:
    pub = replace(_facts().publication, publishes=frozenset({"insert", "update", "delete"}))
    check = _pg(_facts(publication=pub), "publication")
    assert check.level == "blocker" and "truncate" in check.detail


def test_doctor_publication_column_list_is_a_blocker() -> None:
    cut = _with_table(_facts(), "public.documents", published_columns=frozenset({"id", "tenant_id"}))
    check = _pg(cut, "publication")
    assert check.level == "blocker" and "body" in check.detail


@pytest.mark.parametrize(("over", "level", "fix"), [
    ({"exists": False}, "blocker", "CREATE TABLE public.freshwire_heartbeat"),
    ({"cdc_write": False}, "blocker", "GRANT SELECT, INSERT, UPDATE ON public.freshwire_heartbeat TO freshwire_cdc;"),
    ({"primary_key": ()}, "blocker", "ADD PRIMARY KEY (id)"),
    ({"published": False}, "warning", "ALTER PUBLICATION freshwire_pub ADD TABLE public.freshwire_heartbeat;"),
])
def test_doctor_heartbeat_levels(over: dict[str, object], level: Level, fix: str) -> None:
    check = _pg(_with_table(_facts(), HEARTBEAT, **over), "heartbeat")
    assert check.level == level and fix in check.fix


def test_doctor_heartbeat_missing_from_the_rules_is_a_warning() -> None:
    rules = _rules('[tables."public.cards"]\nkeys = ["card:{id}"]\n')
    check = _pg(_facts(rules), "heartbeat", rules=rules)
    assert check.level == "warning" and "rules file" in check.detail


def test_doctor_rules_check_levels() -> None:
    assert rules_check(RULES, "rules.toml").level == "ok"
    assert rules_check(None, "").level == "skipped"
    assert rules_check(None, "r.toml", "table x: bad").level == "blocker"
    assert rules_check(_rules('[tables."public.we,ird"]\nkeys = []\n'), "r.toml").level == "blocker"


# --- Redis and Kafka --------------------------------------------------------------------------------

HEALTHY_REDIS = RedisFacts(policy="noeviction", appendonly=True, save="", watermark=True)


def _redis(facts: RedisFacts, name: str, kafka: KafkaFacts | None = None) -> Check:
    return _one(evaluate_redis(facts, kafka), name)


@pytest.mark.parametrize(("policy", "level"), [
    ("noeviction", "ok"), ("allkeys-lru", "blocker"), ("allkeys-lfu", "blocker"), ("allkeys-random", "blocker"),
    ("volatile-lru", "warning"), ("volatile-ttl", "warning"), (None, "warning"), ("made-up", "warning"),
])
def test_doctor_redis_policy_levels(policy: str | None, level: Level) -> None:
    check = _redis(replace(HEALTHY_REDIS, policy=policy, read_error="NOPERM"), "redis_policy")
    assert check.level == level
    if level != "ok":
        assert "noeviction" in check.fix or "provider" in check.fix


def test_doctor_redis_ttl_on_a_freshwire_key_is_a_blocker() -> None:
    check = _redis(replace(HEALTHY_REDIS, expiring=("{fw}:versions",)), "redis_ttl")
    assert check.level == "blocker" and check.fix == "PERSIST {fw}:versions"


@pytest.mark.parametrize(("appendonly", "save", "level"), [
    (True, "", "ok"), (False, "3600 1", "warning"), (False, "", "warning"), (False, None, "warning"),
    (None, None, "warning"),
])
def test_doctor_redis_persistence_levels(appendonly: bool | None, save: str | None, level: Level) -> None:
    assert _redis(replace(HEALTHY_REDIS, appendonly=appendonly, save=save), "redis_persistence").level == level


def test_doctor_version_store_emptied_behind_a_committed_offset_is_a_blocker() -> None:
    emptied = replace(HEALTHY_REDIS, watermark=False)
    check = _redis(emptied, "version_store", KafkaFacts(committed=1200))
    assert check.level == "blocker" and "--reset-offsets --to-earliest" in check.fix
    trimmed = _redis(emptied, "version_store", KafkaFacts(committed=1200, log_start=800))
    assert trimmed.level == "blocker" and "commit offset 0" in trimmed.fix


@pytest.mark.parametrize(("redis_facts", "kafka", "level"), [
    (HEALTHY_REDIS, None, "skipped"),
    (HEALTHY_REDIS, KafkaFacts(error="timed out"), "warning"),
    (replace(HEALTHY_REDIS, watermark=False), KafkaFacts(committed=None), "ok"),  # nothing consumed yet
    (replace(HEALTHY_REDIS, watermark=False), KafkaFacts(committed=0), "ok"),
    (HEALTHY_REDIS, KafkaFacts(committed=1200), "ok"),
])
def test_doctor_version_store_levels(redis_facts: RedisFacts, kafka: KafkaFacts | None, level: Level) -> None:
    assert _redis(redis_facts, "version_store", kafka).level == level


# --- output and exit code ---------------------------------------------------------------------------

def test_doctor_format_line_pads_level_and_name_and_appends_the_fix() -> None:
    check = Check("wal_level", "blocker", "is 'replica'; logical decoding needs 'logical'",
                  "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
    assert format_line(check) == ("blocker  wal_level            is 'replica'; logical decoding needs 'logical'   "
                                  "fix: ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")
    assert format_line(Check("slot", "ok", "active")) == "ok       slot                 active"


@given(st.lists(st.sampled_from(["ok", "skipped", "warning", "blocker"])))
def test_doctor_exit_code_is_2_exactly_when_a_blocker_exists(levels: list[Level]) -> None:
    checks = [Check("c", level, "") for level in levels]
    assert exit_code(checks) == (2 if "blocker" in levels else 0)


def test_doctor_unreachable_postgres_is_one_blocker_line() -> None:
    checks = doctor.check_postgres("postgresql://nobody:x@127.0.0.1:1/app", RULES)
    assert [(c.name, c.level) for c in checks] == [("postgres", "blocker")]
    assert "cannot read the catalogs" in checks[0].detail


def test_doctor_unreachable_redis_is_one_blocker_line() -> None:
    checks = doctor.check_redis("redis://127.0.0.1:1/0")
    assert [(c.name, c.level) for c in checks] == [("redis", "blocker")]


def test_doctor_cli_exits_2_and_prints_one_line_per_check(capsys: pytest.CaptureFixture[str]) -> None:
    code = doctor.main(["--dsn", "postgresql://nobody:x@127.0.0.1:1/app", "--rules", str(DEMO_RULES),
                        "--redis-url", "", "--kafka-bootstrap", ""])
    lines = capsys.readouterr().out.splitlines()
    assert code == 2
    assert [line.split()[:2] for line in lines] == [["ok", "rules"], ["blocker", "postgres"]]


def test_redis_health_pure_verdicts() -> None:
    from contract.redis_health import evicts_version_store, store_was_emptied

    assert evicts_version_store("allkeys-lru") and evicts_version_store("allkeys-lfu")
    assert not evicts_version_store("noeviction") and not evicts_version_store("volatile-lru")
    assert not evicts_version_store(None)
    assert store_was_emptied(None, 10) and store_was_emptied("", 1)
    assert not store_was_emptied("00000000019d0138", 10) and not store_was_emptied(None, 0)
    assert not store_was_emptied(None, None)

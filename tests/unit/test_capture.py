"""connectors.capture: Debezium's include lists derived from the rules file."""

from __future__ import annotations

import re
import tomllib

import pytest
from debezium_json import DEMO_RULES

from cdc.errors import RulesError
from cdc.rules import Rules, load_rules, parse_rules
from connectors.capture import capture_settings, needed_columns
from connectors.register import connector_config


def _java_full_match(patterns: str, name: str) -> bool:
    # Debezium matches each comma-separated regex against the whole name; these use no Java-only syntax.
    return any(re.fullmatch(p, name) for p in patterns.split(","))


def test_capture_without_rules_captures_everything() -> None:
    assert capture_settings(Rules({})) == {}


def test_capture_demo_rules_lists_rule_tables_and_read_columns() -> None:
    got = capture_settings(load_rules(DEMO_RULES))
    tables, columns = got["table.include.list"], got["column.include.list"]
    for table in ("public.cards", "public.boards", "public.outbox", "public.freshwire_heartbeat",
                  "public.documents"):
        assert _java_full_match(tables, table)
    assert not _java_full_match(tables, "public.nopk_probe")
    for col in ("id", "tenant_id", "board_id", "title", "status", "owner", "version"):
        assert _java_full_match(columns, f"public.cards.{col}")
    assert not _java_full_match(columns, "public.cards.updated_at")
    assert _java_full_match(columns, "public.documents.body")
    assert not _java_full_match(columns, "public.documents.meta")  # the 5 MB jsonb nobody reads
    assert _java_full_match(columns, "public.outbox.keys")
    assert not _java_full_match(columns, "public.outbox.payload")
    assert not _java_full_match(columns, "public.freshwire_heartbeat.beat_at")


def test_capture_needed_columns_of_an_outbox() -> None:
    rules = parse_rules(tomllib.loads('[tables."public.outbox"]\noutbox = true\n'))
    assert needed_columns(rules.tables["public.outbox"]) == ("keys", "aggregatetype", "aggregateid")


def test_capture_refuses_names_debezium_lists_cannot_hold() -> None:
    rules = parse_rules(tomllib.loads('[tables."public.we,ird"]\nkeys = ["x:{id}"]\n'))
    with pytest.raises(RulesError, match="plain identifier"):
        capture_settings(rules)


def test_capture_in_the_registered_config() -> None:
    _name, config = connector_config("db", 5432, rules=load_rules(DEMO_RULES))
    assert "public\\.cards" in config["table.include.list"]
    assert config["errors.tolerance"] == "all"  # a record too large is dropped, and END's count finds it
    assert int(config["producer.override.max.request.size"]) >= 16 * 1024 * 1024

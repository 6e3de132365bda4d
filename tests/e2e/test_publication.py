"""The publication follows the rules file and never breaks the application's writes (issue #18)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from cdc.rules import load_rules
from connectors import publication, services
from connectors.stack_settings import StackSettings


def _published(s: StackSettings) -> set[str]:
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        all_tables = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = 'freshwire_pub'").fetchone()
        assert all_tables is not None and all_tables[0] is False, "the publication must not be FOR ALL TABLES"
        rows = conn.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                            "WHERE pubname = 'freshwire_pub'").fetchall()
    return {str(r[0]) for r in rows}


def test_publication_holds_exactly_the_rule_tables(stack_settings: StackSettings) -> None:
    assert _published(stack_settings) == set(load_rules(services.RULES_FILE).tables)


def test_publication_table_without_primary_key_stays_writable(stack_settings: StackSettings) -> None:
    with psycopg.connect(stack_settings.app_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS nopk_probe")
        conn.execute("CREATE TABLE nopk_probe (name text, n int)")
        conn.execute("INSERT INTO nopk_probe VALUES ('a', 1), ('b', 2)")
        conn.execute("UPDATE nopk_probe SET n = n + 1 WHERE name = 'a'")  # refused under FOR ALL TABLES
        conn.execute("DELETE FROM nopk_probe WHERE name = 'b'")
        assert conn.execute("SELECT name, n FROM nopk_probe").fetchall() == [("a", 2)]
        conn.execute("DROP TABLE nopk_probe")


def test_publication_follows_a_rules_change(stack_settings: StackSettings, tmp_path: Path) -> None:
    """A table added to the rules joins the publication and leaves it when removed; a rule table that
    would lose its UPDATEs and DELETEs (no primary key, no replica identity) is left out, and stays writable."""
    s = stack_settings
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        for table in ("pub_probe", "pub_probe_nopk"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("CREATE TABLE pub_probe (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE pub_probe_nopk (id int)")
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(services.RULES_FILE.read_text() + '\n[tables."public.pub_probe"]\nkeys = ["probe:{id}"]\n'
                          '\n[tables."public.pub_probe_nopk"]\nkeys = ["probe:{id}"]\n')
    try:
        done = publication.sync(s.pg_dsn, load_rules(rules_file))
        assert "public.pub_probe" in _published(s)
        assert "public.pub_probe_nopk" not in _published(s)
        assert [t for t, _why in done.skipped] == ["public.pub_probe_nopk"]
        with psycopg.connect(s.app_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO pub_probe_nopk VALUES (1)")
            conn.execute("UPDATE pub_probe_nopk SET id = 2")
            conn.execute("DELETE FROM pub_probe_nopk")
    finally:
        publication.sync(s.pg_dsn, load_rules(services.RULES_FILE))
        with psycopg.connect(s.app_dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS pub_probe, pub_probe_nopk")
    assert "public.pub_probe" not in _published(s)

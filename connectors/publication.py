"""The publication follows the rules file: exactly the rule tables, never FOR ALL TABLES.

A FOR ALL TABLES publication makes PostgreSQL refuse every UPDATE and DELETE on a table without a
primary key or replica identity ("cannot delete from table ... because it does not have a replica
identity and publishes deletes"): Freshwire would break the application's writes. So the publication
lists the rule tables only, and a rule table that cannot be published without that effect (no
primary key and no replica identity) is left out and reported, never added.

    python -m connectors.publication --dsn postgresql://postgres:…@db/app --rules rules.toml [--dry-run]

`plan` is pure (current state in, statements out); `sync` reads the catalogs and runs the plan in one
transaction (DDL is transactional, so a walsender never sees the publication missing).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.rules import Rules, load_rules

DEFAULT_NAME = "freshwire_pub"


@dataclass(frozen=True)
class TableState:
    exists: bool
    publishable: bool  # has a primary key or a replica identity (FULL or an index): UPDATE/DELETE keep working


@dataclass(frozen=True)
class Plan:
    statements: tuple[sql.Composed, ...]
    tables: tuple[str, ...]  # what the publication will hold
    skipped: tuple[tuple[str, str], ...]  # (table, why) rule tables left out


def plan(name: str, rules: Rules, tables: dict[str, TableState], exists: bool, all_tables: bool,
         current: frozenset[str]) -> Plan:
    """Statements that make publication `name` hold exactly the publishable rule tables."""
    wanted, skipped = [], []
    for table in sorted(rules.tables):
        state = tables.get(table, TableState(False, False))
        if not state.exists:
            skipped.append((table, "no such table"))
        elif not state.publishable:
            skipped.append((table, "no primary key and no replica identity: publishing it would make PostgreSQL "
                                   f"refuse its UPDATEs and DELETEs (ALTER TABLE {table} REPLICA IDENTITY FULL)"))
        else:
            wanted.append(table)
    idents = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in wanted)
    pub = sql.Identifier(name)
    statements: list[sql.Composed] = []
    if exists and (all_tables or not wanted):
        statements.append(sql.SQL("DROP PUBLICATION {}").format(pub))
        exists = False
    if wanted and not exists:
        statements.append(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(pub, idents))
    elif wanted and frozenset(wanted) != current:
        statements.append(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(pub, idents))
    return Plan(tuple(statements), tuple(wanted), tuple(skipped))


TABLES_SQL = """
SELECT n.nspname || '.' || c.relname,
       c.relreplident = 'f' OR (c.relreplident = 'd' AND EXISTS
         (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
       OR (c.relreplident = 'i' AND EXISTS
         (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname || '.' || c.relname = ANY(%s)
"""


def read_state(conn: psycopg.Connection[Any], name: str, rules: Rules) -> tuple[dict[str, TableState], bool, bool,
                                                                            frozenset[str]]:
    rows = conn.execute(TABLES_SQL, (sorted(rules.tables),)).fetchall()
    tables = {str(r[0]): TableState(True, bool(r[1])) for r in rows}
    pub = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    current = conn.execute("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = %s",
                           (name,)).fetchall()
    return tables, pub is not None, bool(pub and pub[0]), frozenset(str(r[0]) for r in current)


def sync(dsn: str, rules: Rules, name: str = DEFAULT_NAME, dry_run: bool = False) -> Plan:
    """Make the publication match the rules (a superuser or the tables' owner); returns what it did."""
    with psycopg.connect(dsn, autocommit=False, connect_timeout=5) as conn:
        p = plan(name, rules, *read_state(conn, name, rules))
        if not dry_run:
            for statement in p.statements:
                conn.execute(statement)
            conn.commit()
        return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", required=True, help="a superuser, or the owner of the rule tables")
    parser.add_argument("--rules", required=True, type=Path)
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--dry-run", action="store_true", help="print the statements, change nothing")
    args = parser.parse_args(argv)
    try:
        p = sync(args.dsn, load_rules(args.rules), args.name, args.dry_run)
    except psycopg.Error as exc:
        print(f"publication {args.name}: {exc}".strip(), file=sys.stderr)
        return 1
    with psycopg.connect(args.dsn) as conn:
        for statement in p.statements:
            print(("would run: " if args.dry_run else "ran: ") + statement.as_string(conn))
    for table, why in p.skipped:
        print(f"left out {table}: {why}", file=sys.stderr)
    print(f"publication {args.name}: {', '.join(p.tables) or '(no table)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""connectors.publication.plan: the statements that make the publication hold exactly the rule tables."""

from __future__ import annotations

import tomllib

from cdc.rules import parse_rules
from connectors.publication import Plan, TableState, plan

RULES = parse_rules(tomllib.loads('[tables."public.a"]\nkeys = ["a:{id}"]\n[tables."public.b"]\nkeys = ["b:{id}"]\n'))
OK = TableState(True, True)


def _text(p: Plan) -> list[str]:
    return [repr(s) for s in p.statements]


def test_publication_plan_creates_a_missing_publication() -> None:
    p = plan("pub", RULES, {"public.a": OK, "public.b": OK}, exists=False, all_tables=False, current=frozenset())
    assert p.tables == ("public.a", "public.b") and len(p.statements) == 1
    assert "CREATE PUBLICATION" in _text(p)[0]


def test_publication_plan_replaces_for_all_tables() -> None:
    p = plan("pub", RULES, {"public.a": OK, "public.b": OK}, exists=True, all_tables=True, current=frozenset())
    assert ["DROP PUBLICATION" in t for t in _text(p)] == [True, False]
    assert "CREATE PUBLICATION" in _text(p)[1]


def test_publication_plan_changes_nothing_when_in_sync() -> None:
    p = plan("pub", RULES, {"public.a": OK, "public.b": OK}, exists=True, all_tables=False,
             current=frozenset({"public.a", "public.b"}))
    assert p.statements == ()


def test_publication_plan_sets_the_tables_when_they_differ() -> None:
    p = plan("pub", RULES, {"public.a": OK, "public.b": OK}, exists=True, all_tables=False,
             current=frozenset({"public.a", "public.c"}))
    assert len(p.statements) == 1 and "SET TABLE" in _text(p)[0]


def test_publication_plan_leaves_out_missing_and_unpublishable_tables() -> None:
    p = plan("pub", RULES, {"public.a": TableState(True, False)}, exists=False, all_tables=False,
             current=frozenset())
    assert p.tables == () and p.statements == ()
    assert dict(p.skipped).keys() == {"public.a", "public.b"}
    assert "REPLICA IDENTITY FULL" in dict(p.skipped)["public.a"]

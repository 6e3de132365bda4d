"""Table tests of cdc.rules: which keys and prefixes a row change invalidates, and rule-file validation."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from debezium_json import DEMO_RULES, change, sample, stack_capture
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc import rules as rules_module
from cdc.decode import decode
from cdc.errors import RulesError
from cdc.model import RowChange
from cdc.rules import (
    NOTHING,
    Invalidation,
    Rules,
    Template,
    default_rule,
    load_rules,
    parse_rules,
    parse_template,
    union,
)
from contract.keys import encode_value

DEMO = load_rules(DEMO_RULES)
CARD = {"id": 1, "tenant_id": 1, "board_id": 1, "title": "Write the launch post", "status": "todo",
        "owner": "ada", "version": 1, "updated_at": "2026-11-27T18:07:07.146203Z"}
CARD_KEYS_BOARD_1 = ("card:1", "board:1", "tenant:1:card:1", "tenant:1:board:1")


def rules(text: str) -> Rules:
    return parse_rules(tomllib.loads(text))


def _captured_change(name: str, offset: int) -> RowChange:
    rows = stack_capture() if name == "stack" else sample(name)
    (c,) = [c for c in rows if c.offset == offset]
    record = decode(c.key, c.value)
    assert isinstance(record, RowChange)
    return record


def test_rules_demo_file_loads() -> None:
    assert set(DEMO.tables) == {"public.cards", "public.boards", "public.outbox", "public.freshwire_heartbeat",
                                "public.idempotency_keys", "public.chaos_items", "public.documents",
                                "public.probe_text", "public.events_log"}
    cards = DEMO.tables["public.cards"]
    assert [t.text for t in cards.templates] == [
        "card:{id}", "board:{board_id}", "tenant:{tenant_id}:card:{id}", "tenant:{tenant_id}:board:{board_id}"]
    assert cards.templates[3].fields == ("tenant_id", "board_id")
    assert cards.columns == frozenset({"title", "status", "owner", "board_id", "tenant_id", "version", "id"})
    assert DEMO.tables["public.outbox"].outbox
    assert DEMO.tables["public.freshwire_heartbeat"].templates == ()


def test_rules_insert_renders_every_template_from_after() -> None:
    inv = DEMO.for_change(change("cards", "c", after=CARD, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_delete_renders_every_template_from_before() -> None:
    inv = DEMO.for_change(change("cards", "d", before=CARD, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_card_moving_boards_invalidates_both_boards() -> None:
    inv = DEMO.for_change(change("cards", "u", before=CARD, after={**CARD, "board_id": 2}, key={"id": 1}))
    assert set(inv.keys) == {*CARD_KEYS_BOARD_1, "board:2", "tenant:1:board:2"}
    assert len(inv.keys) == len(set(inv.keys)), "keys rendered from both images are deduplicated"
    assert inv.prefixes == ()


def test_rules_card_moving_boards_in_the_real_capture() -> None:
    inv = DEMO.for_change(_captured_change("stack", 25))
    assert set(inv.keys) == {"card:1", "board:1", "board:2", "tenant:1:card:1", "tenant:1:board:1",
                             "tenant:1:board:2"}


def test_rules_update_touching_no_listed_column_invalidates_nothing() -> None:
    after = {**CARD, "updated_at": "2026-11-27T18:09:00Z"}
    assert DEMO.for_change(change("cards", "u", before=CARD, after=after, key={"id": 1})) == NOTHING


@pytest.mark.parametrize("column", ["title", "status", "owner", "version"])
def test_rules_update_touching_a_listed_column_invalidates(column: str) -> None:
    after = {**CARD, column: "changed"}
    inv = DEMO.for_change(change("cards", "u", before=CARD, after=after, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_update_listed_column_set_to_null_invalidates() -> None:
    inv = DEMO.for_change(change("cards", "u", before=CARD, after={**CARD, "owner": None}, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_update_without_before_image_is_treated_as_changed() -> None:
    inv = DEMO.for_change(change("cards", "u", before=None, after=CARD, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_update_with_listed_column_missing_from_before_is_treated_as_changed() -> None:
    before = {k: v for k, v in CARD.items() if k != "status"}
    inv = DEMO.for_change(change("cards", "u", before=before, after=CARD, key={"id": 1}))
    assert inv == Invalidation(CARD_KEYS_BOARD_1, ())


def test_rules_column_filter_only_applies_to_updates() -> None:
    r = rules('[tables."public.cards"]\nkeys = ["card:{id}"]\ncolumns = []\n')
    assert r.for_change(change("cards", "c", after=CARD)) == Invalidation(("card:1",), ())
    assert r.for_change(change("cards", "d", before=CARD)) == Invalidation(("card:1",), ())
    assert r.for_change(change("cards", "u", before=CARD, after={**CARD, "title": "x"})) == NOTHING


def test_rules_missing_column_invalidates_the_template_prefix() -> None:
    # A delete's before image carrying only the primary key: board and tenant cannot be rendered.
    inv = DEMO.for_change(change("cards", "d", before={"id": 1}, key={"id": 1}))
    assert inv == Invalidation(("card:1",), ("board:", "tenant:"))


def test_rules_missing_column_in_one_image_still_renders_from_the_other() -> None:
    inv = DEMO.for_change(change("cards", "u", before={"id": 1}, after={**CARD, "board_id": 2}, key={"id": 1}))
    assert set(inv.keys) == {"card:1", "board:2", "tenant:1:card:1", "tenant:1:board:2"}
    assert inv.prefixes == ("board:", "tenant:")


def test_rules_null_column_renders_no_key() -> None:
    r = rules('[tables."public.cards"]\nkeys = ["card:{id}", "owner:{owner}", "owner:{owner}:board:{board_id}"]\n')
    inv = r.for_change(change("cards", "c", after={**CARD, "owner": None}))
    assert inv == Invalidation(("card:1",), ())


def test_rules_literal_template_is_a_key() -> None:
    r = rules('[tables."public.boards"]\nkeys = ["boards", "board:{id}"]\n')
    assert r.for_change(change("boards", "c", after={"id": 3})) == Invalidation(("boards", "board:3"), ())


def test_rules_truncate_invalidates_prefixes_of_templates_and_literal_keys() -> None:
    r = rules('[tables."public.boards"]\nkeys = ["board:{id}", "boards", "tenant:{tenant_id}:boards", '
              '"tenant:{tenant_id}:board:{id}", "{id}:x"]\n')
    inv = r.for_change(change("boards", "t", tx="9:1"))
    assert inv == Invalidation(("boards",), ("board:", "tenant:", ""))


def test_rules_truncate_of_demo_cards() -> None:
    assert DEMO.for_change(change("cards", "t")) == Invalidation((), ("card:", "board:", "tenant:"))


def test_rules_truncate_of_a_table_with_empty_keys_invalidates_nothing() -> None:
    assert DEMO.for_change(change("freshwire_heartbeat", "t")) == NOTHING


def test_rules_truncate_of_unlisted_table_from_real_capture() -> None:
    (c,) = [c for c in sample("runt") if c.body is not None and c.body.get("op") == "t"]
    record = decode(c.key, c.value)
    assert isinstance(record, RowChange)
    assert DEMO.for_change(record) == Invalidation(("items_default",), ("items_default:",))


def test_rules_default_rule_for_unlisted_table() -> None:
    inv = DEMO.for_change(change("items", "c", after={"id": 2, "name": "widget"}, key={"id": 2}))
    assert inv == Invalidation(("items:2", "items"), ())


def test_rules_default_rule_on_real_capture_insert_update_delete() -> None:
    run1 = {c.offset: c for c in sample("run1")}
    invs = []
    for offset in (6, 10, 23):  # insert, update, delete of items id 2
        record = decode(run1[offset].key, run1[offset].value)
        assert isinstance(record, RowChange)
        invs.append(DEMO.for_change(record))
    assert invs == [Invalidation(("items:2", "items"), ())] * 3


def test_rules_default_rule_composite_primary_key() -> None:
    inv = DEMO.for_change(change("memberships", "c", after={"org": 7, "user": 9, "role": "x"},
                                 key={"org": 7, "user": 9}))
    assert inv == Invalidation(("memberships:7:9", "memberships"), ())


def test_rules_default_rule_non_public_schema_is_qualified() -> None:
    inv = DEMO.for_change(change("log", "d", before={"id": 5}, key={"id": 5}, schema="audit"))
    assert inv == Invalidation(("audit.log:5", "audit.log"), ())
    assert DEMO.for_change(change("log", "t", schema="audit")) == Invalidation(("audit.log",), ("audit.log:",))


def test_rules_default_rule_pk_change_invalidates_old_and_new_row() -> None:
    inv = DEMO.for_change(change("items", "u", before={"id": 1}, after={"id": 3}, key={"id": 3}))
    assert inv == Invalidation(("items:1", "items", "items:3"), ())


def test_rules_default_rule_without_message_key_invalidates_the_row_prefix() -> None:
    inv = DEMO.for_change(change("nopk", "c", after={"a": 1}))
    assert inv == Invalidation(("nopk",), ("nopk:",))


def test_rules_listed_table_does_not_get_default_keys() -> None:
    inv = DEMO.for_change(change("boards", "c", after={"id": 4, "tenant_id": 2}, key={"id": 4}))
    assert inv == Invalidation(("board:4", "tenant:2:board:4", "tenant:2:boards"), ())


def test_rules_heartbeat_table_invalidates_nothing() -> None:
    assert DEMO.for_change(_captured_change("stack", 2)) == NOTHING
    assert DEMO.for_change(_captured_change("stack", 6)) == NOTHING


def test_rules_outbox_explicit_keys_column_from_real_capture() -> None:
    assert DEMO.for_change(_captured_change("stack", 30)) == Invalidation(("order:7", "tenant:1:orders"), ())


def test_rules_outbox_explicit_keys_are_deduplicated() -> None:
    row = {"id": 2, "aggregatetype": "order", "aggregateid": "8", "keys": ["a", "b", "a"]}
    assert DEMO.for_change(change("outbox", "c", after=row)) == Invalidation(("a", "b"), ())


@pytest.mark.parametrize("keys", [None, [], ["ok", ""], ["ok", 3]], ids=["null", "empty", "blank", "non_string"])
def test_rules_outbox_falls_back_to_aggregate(keys: object) -> None:
    row = {"id": 2, "aggregatetype": "order", "aggregateid": "8", "keys": keys}
    assert DEMO.for_change(change("outbox", "c", after=row)) == Invalidation(("order:8",), ())


def test_rules_outbox_without_aggregate_invalidates_nothing() -> None:
    row = {"id": 2, "aggregatetype": "order", "aggregateid": None, "keys": None}
    assert DEMO.for_change(change("outbox", "c", after=row)) == NOTHING


def test_rules_outbox_snapshot_read_counts_as_insert() -> None:
    row = {"id": 2, "aggregatetype": "order", "aggregateid": "8"}
    assert DEMO.for_change(change("outbox", "r", after=row)) == Invalidation(("order:8",), ())


def test_rules_outbox_only_on_insert() -> None:
    row = {"id": 2, "aggregatetype": "order", "aggregateid": "8", "keys": ["x"]}
    assert DEMO.for_change(change("outbox", "u", before=row, after=row)) == NOTHING
    assert DEMO.for_change(change("outbox", "d", before=row)) == NOTHING
    assert DEMO.for_change(_captured_change("stack", 29)) == NOTHING  # the real truncate of the outbox


def test_rules_union_deduplicates_in_order() -> None:
    parts = [Invalidation(("a", "b"), ("p:",)), Invalidation(("b", "c"), ("p:", "q:")), NOTHING]
    assert union(parts) == Invalidation(("a", "b", "c"), ("p:", "q:"))


BAD_TEMPLATES = [
    ("white_space", "card: {id}"),
    ("format_spec", "card:{id:>5}"),
    ("conversion", "card:{id!r}"),
    ("positional", "card:{}"),
    ("index", "card:{0}"),
    ("attribute", "card:{id.real}"),
    ("item", "card:{id[0]}"),
    ("unclosed", "card:{id"),
    ("stray_close", "card:id}"),
    ("empty", ""),
]


@pytest.mark.parametrize("template", [t for _, t in BAD_TEMPLATES], ids=[n for n, _ in BAD_TEMPLATES])
def test_rules_bad_template_error_names_table_and_template(template: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f'[tables."public.cards"]\nkeys = ["card:{{id}}", {template!r}]\n'.replace("'", '"'))
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert "public.cards" in str(info.value)
    assert repr(template) in str(info.value)


BAD_FILES = [
    ("template_not_string", '[tables."public.cards"]\nkeys = [1]\n', ["public.cards", "1"]),
    ("keys_not_list", '[tables."public.cards"]\nkeys = "card:{id}"\n', ["public.cards", "keys"]),
    ("columns_not_list", '[tables."public.cards"]\nkeys = []\ncolumns = "title"\n', ["public.cards", "columns"]),
    ("columns_not_strings", '[tables."public.cards"]\ncolumns = [1]\n', ["public.cards", "columns"]),
    ("outbox_not_bool", '[tables."public.outbox"]\noutbox = "yes"\n', ["public.outbox", "outbox"]),
    ("unknown_setting", '[tables."public.cards"]\nkey = ["card:{id}"]\n', ["public.cards", "key"]),
    ("not_schema_qualified", '[tables.cards]\nkeys = ["card:{id}"]\n', ["cards", "schema-qualified"]),
    ("unquoted_dotted_name", '[tables.public.cards]\nkeys = ["card:{id}"]\n', ["public", "schema-qualified"]),
    ("table_not_a_table", 'tables."public.cards" = 1\n', ["public.cards"]),
    ("tables_not_a_table", 'tables = 1\n', ["tables"]),
    ("unknown_top_level", '[table."public.cards"]\nkeys = []\n', ["table"]),
]


@pytest.mark.parametrize(("text", "needles"), [f[1:] for f in BAD_FILES], ids=[f[0] for f in BAD_FILES])
def test_rules_bad_file_error_names_the_culprit(text: str, needles: list[str], tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as info:
        load_rules(path)
    for needle in needles:
        assert needle in str(info.value)


def test_rules_file_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[tables."public.cards"\nkeys = [\n')
    with pytest.raises(RulesError, match="not valid TOML") as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_rules_file_missing(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules file"):
        load_rules(tmp_path / "absent.toml")


def test_rules_no_file_means_default_rules_only() -> None:
    r = load_rules(None)
    assert r.tables == {}
    assert r.for_change(change("cards", "c", after=CARD, key={"id": 1})) == Invalidation(("cards:1", "cards"), ())


def test_rules_parse_rules_accepts_a_valid_document(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[tables."app.orders"]\nkeys = ["order:{id}", "orders"]\ncolumns = ["total"]\n')
    r = load_rules(path)
    rule = r.tables["app.orders"]
    assert [t.text for t in rule.templates] == ["order:{id}", "orders"]
    assert rule.columns == frozenset({"total", "id"}) and not rule.outbox  # a template's columns always count


def test_rules_template_literals_outside_the_key_alphabet_are_refused() -> None:
    """Review bug 9: every key the consumer emits must be subscribable; a literal brace never is."""
    with pytest.raises(RulesError, match="key alphabet"):
        rules('[tables."public.boards"]\nkeys = ["all{{boards}}"]\n')
    with pytest.raises(RulesError, match="key alphabet"):
        rules('[tables."public.boards"]\nkeys = ["board#{id}"]\n')


@pytest.mark.parametrize(("table", "key", "expected"), [
    ("odd{name}", {"id": 1}, Invalidation(("odd=7Bname=7D:1", "odd=7Bname=7D"), ())),
    ("items", {"0": 1}, Invalidation(("items",), ("items:",))),
    ("items", {"a}b": 1}, Invalidation(("items",), ("items:",))),
], ids=["braces_in_table_name", "digit_column", "brace_column"])
def test_rules_default_rule_odd_identifiers_do_not_crash(table: str, key: dict[str, int],
                                                         expected: Invalidation) -> None:
    row = {**key, "v": 1}
    assert DEMO.for_change(change(table, "c", after=row, key=key)) == expected


def test_rules_delete_without_replica_identity_full_invalidates_template_prefixes() -> None:
    """Review bug 4: a delete's old row without REPLICA IDENTITY FULL (captured from the real stack: a
    table with the default identity) sends non-key columns as null; the parent key must not be skipped."""
    (c,) = [c for c in sample("run1") if c.where == "app.public.items_default" and c.body is not None
            and c.body.get("op") == "d"]
    record = decode(c.key, c.value)
    assert isinstance(record, RowChange) and record.before == {"id": 1, "name": None}
    r = rules('[tables."public.items_default"]\nkeys = ["item:{id}", "named:{name}"]\n')
    assert r.for_change(record) == Invalidation(("item:1",), ("named:",))


def test_rules_delete_with_full_identity_and_a_null_parent_renders_no_parent_key() -> None:
    r = rules('[tables."public.cards"]\nkeys = ["card:{id}", "owner:{owner}"]\n')
    inv = r.for_change(change("cards", "d", before={**CARD, "owner": None}, key={"id": 1}))
    assert inv == Invalidation(("card:1",), ())  # other columns were sent: the null is real


@pytest.mark.parametrize("value", ["José Ñ,x*", "a:b/c=d", "100%", "tab\there", "emoji 🙂", "", "=41"])
def test_rules_text_keys_with_any_characters_render_valid_reversible_keys(value: str) -> None:
    """Review bug 9: a table keyed by text renders keys every client can subscribe to, and the value
    comes back exactly."""
    from contract.keys import decode_value, valid_key

    r = rules('[tables."public.probe_text"]\nkeys = ["probe_text:{id}"]\n')
    (key,) = r.for_change(change("probe_text", "c", after={"id": value}, key={"id": value})).keys
    assert valid_key(key) or value == "", key
    assert decode_value(key.removeprefix("probe_text:")) == value


def test_rules_key_over_256_characters_becomes_its_parent_prefix() -> None:
    r = rules('[tables."public.docs"]\nkeys = ["tenant:{tenant_id}:doc:{title}"]\n')
    inv = r.for_change(change("docs", "c", after={"tenant_id": 7, "title": "x" * 300}))
    assert inv == Invalidation((), ("tenant:7:doc:",))


def test_rules_outbox_keys_are_made_valid() -> None:
    row = {"keys": ["tenant:1:name:José"], "aggregatetype": "t", "aggregateid": "1"}
    inv = DEMO.for_change(change("outbox", "c", after=row, tx="9:100"))
    assert inv.keys == ("tenant:1:name:Jos=C3=A9",)


# -- the hot path's shortcuts give what the plain code gives

def _render_prefix_reference(template: Template, row: dict[str, Any], keep: int) -> str | None:
    """Template.render_prefix as first written: zip the fields with the literals after them."""
    parts = [template.literals[0]]
    for name, literal in zip(template.fields[:keep], template.literals[1:keep + 1], strict=True):
        value = row[name]
        if value is None:
            return None
        parts.append(encode_value(value))
        parts.append(literal)
    return "".join(parts)


VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                   st.floats(allow_nan=False), st.text(max_size=6), st.lists(st.integers(), max_size=2))


@settings(max_examples=500, deadline=None)
@given(text=st.sampled_from(["card", "card:{id}", "t:{tenant_id}:card:{id}", "{a}{b}x{c}", "a.{b}:{id}:z"]),
       row=st.fixed_dictionaries({}, optional={"id": VALUES, "tenant_id": VALUES, "a": VALUES, "b": VALUES,
                                               "c": VALUES}),
       keep=st.integers(min_value=0, max_value=4))
def test_rules_template_render_prefix_agrees_with_its_first_version(text: str, row: dict[str, Any], keep: int) -> None:
    template = parse_template("public.t", text)
    try:
        expected: str | type[KeyError] | None = _render_prefix_reference(template, row, keep)
    except KeyError:
        expected = KeyError
    try:
        got: str | type[KeyError] | None = template.render_prefix(row, keep)
    except KeyError:
        got = KeyError
    assert got == expected


def test_rules_default_rule_is_built_once_per_table_and_key_columns() -> None:
    rules = Rules({})
    first = change("items", "c", after={"id": 1, "n": 1}, key={"id": 1}, tx="9:1", lsn=1)
    again = change("items", "u", before={"id": 2, "n": 1}, after={"id": 2, "n": 2}, key={"id": 2}, tx="9:2", lsn=2)
    other_key = change("items", "c", after={"a": 1, "b": 2}, key={"a": 1, "b": 2}, tx="9:3", lsn=3)
    other_schema = change("items", "c", after={"id": 1}, key={"id": 1}, tx="9:4", lsn=4, schema="s")
    assert rules._default_rule(first) is rules._default_rule(again)
    for c in (first, other_key, other_schema):
        assert rules._default_rule(c) == default_rule(c)
        assert rules.for_change(c) == Rules({}).for_change(c)
    assert len({id(rules._default_rule(c)) for c in (first, other_key, other_schema)}) == 3
    assert rules.for_change(other_key).keys == ("items:1:2", "items")


def test_rules_default_rules_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_module, "MAX_DEFAULT_RULES", 2)
    rules = Rules({})
    for n in range(5):
        c = change(f"t{n}", "c", after={"id": 1}, key={"id": 1}, tx="9:1", lsn=1)
        assert rules.for_change(c).keys == (f"t{n}:1", f"t{n}")
        assert len(rules._defaults) <= 2


def test_rules_payload_reuses_keys_only_for_the_images_it_rendered() -> None:
    """A delete without REPLICA IDENTITY FULL renders from its key columns; its payload is "null"."""
    card = {**CARD, "title": None, "status": None, "owner": None, "version": None, "board_id": None,
            "tenant_id": None, "updated_at": None}
    deleted = change("cards", "d", before=card, key={"id": 1}, tx="9:1", lsn=1)
    inv = DEMO.for_change(deleted)
    assert inv.keys == ("card:1",) and inv.data == (("card:1", "null"),)
    moved = change("cards", "u", before=CARD, after={**CARD, "tenant_id": 2}, key={"id": 1}, tx="9:2", lsn=2)
    inv = DEMO.for_change(moved)
    assert dict(inv.without) == {"tenant:1:card:1": "moved"}
    assert [k for k, _ in inv.data] == ["card:1", "tenant:2:card:1"]

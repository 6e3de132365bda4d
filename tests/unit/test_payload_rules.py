"""Table tests of the opt-in payload (#14): which keys carry which row values, through the rules, the
assembler's limits, the release scripts' argument lists (and their pure model) and the cluster joiner."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest
from debezium_json import DEMO_RULES

from cdc.assembler import Assembler, whole_tables
from cdc.errors import RulesError
from cdc.keyset import KeyLimits
from cdc.model import Batch, Op, RowChange, TxBegin, TxEnd
from cdc.rules import UNAVAILABLE, Rules, load_rules, parse_rules
from connectors.capture import capture_settings, needed_columns
from contract.redis_buckets import Control, Joiner, Layout, Part, decode_part, release_calls
from contract.redis_layout import data_arg, data_of, decode_published, release_args

CARDS = """
[tables."public.cards"]
keys = ["card:{id}", "board:{board_id}", "tenant:{tenant_id}:card:{id}"]
payload = ["title", "status"]

[tables."public.tags"]
keys = ["card:{card_id}"]
"""
CARD = {"id": 1, "tenant_id": 7, "board_id": 3, "title": "Ship it", "status": "todo", "owner": "ada"}


def rules(text: str = CARDS) -> Rules:
    return parse_rules(tomllib.loads(text))


def change(op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None, table: str = "cards",
           tx: str | None = "9", key: dict[str, Any] | None = None) -> RowChange:
    row = after or before or {}
    return RowChange("public", table, op, before, after, key if key is not None else {"id": row.get("id")}, tx, 1, 0)


def test_payload_rules_insert_carries_the_columns_on_the_row_keys_only() -> None:
    inv = rules().for_change(change("c", None, CARD))
    assert inv.keys == ("card:1", "board:3", "tenant:7:card:1")
    text = json.dumps({"title": "Ship it", "status": "todo"}, separators=(",", ":"))
    assert dict(inv.data) == {"card:1": text, "tenant:7:card:1": text}  # board:3 is not the card's key
    assert inv.without == ()


def test_payload_rules_delete_carries_null() -> None:
    inv = rules().for_change(change("d", CARD, None))
    assert dict(inv.data) == {"card:1": "null", "tenant:7:card:1": "null"}


def test_payload_rules_toast_placeholder_sends_the_key_without_data() -> None:
    before = {**CARD, "title": "x" * 9000}
    after = {**CARD, "status": "done", "title": UNAVAILABLE}
    inv = rules().for_change(change("u", before, after))
    assert inv.data == ()
    assert dict(inv.without) == {"card:1": "unavailable", "tenant:7:card:1": "unavailable"}
    assert "card:1" in inv.keys  # still invalidated: the client refetches


def test_payload_rules_a_column_not_sent_is_unavailable_too() -> None:
    after = {k: v for k, v in CARD.items() if k != "status"}
    inv = rules().for_change(change("c", None, after))
    assert inv.data == () and {k for k, _ in inv.without} == {"card:1", "tenant:7:card:1"}


def test_payload_rules_binary_and_array_placeholders_count() -> None:
    r = rules().tables["public.cards"]
    from cdc.rules import payload_of
    assert payload_of(r, change("c", None, {**CARD, "title": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="})) is None
    assert payload_of(r, change("c", None, {**CARD, "title": [UNAVAILABLE]})) is None


def test_payload_rules_a_key_the_row_left_goes_without_data() -> None:
    moved = {**CARD, "tenant_id": 8}
    inv = rules().for_change(change("u", CARD, moved))
    assert "tenant:7:card:1" in inv.keys and "tenant:8:card:1" in inv.keys
    assert set(dict(inv.data)) == {"card:1", "tenant:8:card:1"}
    assert dict(inv.without) == {"tenant:7:card:1": "moved"}


def test_payload_rules_nothing_without_payload_or_when_degraded() -> None:
    plain = rules(CARDS.replace('payload = ["title", "status"]\n', ""))
    assert plain.for_change(change("c", None, CARD)).data == ()
    assert rules().for_change(change("c", None, CARD), depth=1).data == ()
    assert rules().for_change(change("t", None, None)).data == ()


def test_payload_rules_a_table_without_primary_key_carries_none() -> None:
    inv = rules().for_change(change("c", None, CARD, key={}))
    assert inv.data == () and inv.without == ()


def test_payload_rules_values_keep_their_json_types() -> None:
    big = {**CARD, "title": "Jos\u00e9", "status": 2**63 + 1}
    text = dict(rules().for_change(change("c", None, big)).data)["card:1"]
    assert json.loads(text) == {"title": "Jos\u00e9", "status": 2**63 + 1}


@pytest.mark.parametrize(("spec", "message"), [
    ('payload = "title"', "payload must be a list"),
    ('payload = ["ti tle"]', "payload must be a list of plain column names"),
    ('payload = [1]', "payload must be a list"),
])
def test_payload_rules_file_is_validated(spec: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        rules(f'[tables."public.cards"]\nkeys = ["card:{{id}}"]\n{spec}\n')


def test_payload_rules_outbox_refuses_payload() -> None:
    with pytest.raises(RulesError, match="outbox table carries no payload"):
        rules('[tables."public.outbox"]\noutbox = true\npayload = ["keys"]\n')


def test_payload_rules_columns_count_as_read_and_are_captured() -> None:
    r = rules('[tables."public.docs"]\nkeys = ["doc:{id}"]\ncolumns = ["title"]\npayload = ["body"]\n')
    rule = r.tables["public.docs"]
    assert rule.columns == frozenset({"title", "body", "id"})
    assert "body" in needed_columns(rule)
    r2 = rules('[tables."public.docs"]\nkeys = ["doc:{id}"]\npayload = ["body"]\n')
    assert capture_settings(r2)["column.include.list"] == r"public\.docs\.(id|body)"


def test_payload_rules_demo_file_sends_card_columns() -> None:
    demo = load_rules(DEMO_RULES)
    assert demo.tables["public.cards"].payload == ("title", "status", "owner", "board_id", "version")
    assert demo.tables["public.documents"].payload == ("title", "body")
    assert demo.tables["public.probe_text"].payload == ("val",)


# -- the assembler: one transaction's data, newest per key, within limits


def run_tx(changes: list[RowChange], rules_: Rules | None = None, limits: KeyLimits | None = None,
           missing: tuple[tuple[str, int], ...] = ()) -> Batch:
    assembler = Assembler(rules_ or rules(), limits=limits)
    assembler.feed(TxBegin("9"), 0)
    for i, c in enumerate(changes):
        assembler.feed(c, i + 1)
    collections: tuple[tuple[str, int], ...] = ()
    if missing:
        collections = tuple((table, sum(1 for c in changes if c.qualified == table) + n) for table, n in missing)
    batch = assembler.feed(TxEnd("9", 0x100, 5, len(changes), collections), len(changes) + 1)
    assert batch is not None
    return batch


def test_payload_assembler_keeps_the_newest_row_of_a_key() -> None:
    b = run_tx([change("c", None, CARD), change("u", CARD, {**CARD, "status": "done"})])
    assert json.loads(b.data["card:1"]) == {"title": "Ship it", "status": "done"}
    b = run_tx([change("c", None, CARD), change("d", CARD, None)])
    assert b.data["card:1"] == "null"


def test_payload_assembler_a_key_also_invalidated_without_data_goes_without() -> None:
    tag = change("c", None, {"id": 5, "card_id": 1}, table="tags")
    for order in ([change("c", None, CARD), tag], [tag, change("c", None, CARD)]):
        b = run_tx(order)
        assert "card:1" in b.keys and "card:1" not in b.data
        assert "tenant:7:card:1" in b.data
        assert b.data_dropped == {"mixed": 1}


def test_payload_assembler_a_later_complete_row_replaces_an_unavailable_one() -> None:
    toasted = change("u", CARD, {**CARD, "title": UNAVAILABLE})
    complete = change("u", CARD, {**CARD, "title": "New"})
    assert "card:1" in run_tx([toasted, complete]).data
    b = run_tx([complete, toasted])
    assert b.data == {} and b.data_dropped == {"unavailable": 2}


def test_payload_assembler_per_key_and_per_transaction_limits() -> None:
    long = {**CARD, "title": "x" * 200}
    b = run_tx([change("c", None, long)], limits=KeyLimits(max_payload_bytes=100))
    assert b.data == {} and b.data_dropped == {"too_large": 2}
    rows = [change("c", None, {**CARD, "id": i, "title": "y" * 50}) for i in range(10)]
    size = len(json.dumps({"title": "y" * 50, "status": "todo"}, separators=(",", ":")))
    b = run_tx(rows, limits=KeyLimits(max_tx_payload_bytes=5 * size))
    assert len(b.data) == 5 and b.data_dropped == {"tx_too_large": 15}
    assert len(b.keys) == 21  # every key is still released (board:3 once)


def test_payload_assembler_degraded_and_missing_transactions_carry_none() -> None:
    rows = [change("c", None, {**CARD, "id": i}) for i in range(20)]
    b = run_tx(rows, limits=KeyLimits(max_keys=5))
    assert b.degraded and b.data == {} and b.data_dropped.get("degraded", 0) > 0
    b = run_tx([change("c", None, CARD)], missing=(("public.cards", 1),))
    assert b.data == {} and b.data_dropped == {"missing": 2}
    full = run_tx([change("c", None, CARD)])
    assert whole_tables(full, rules()).data == {}


# -- through Redis: the release arguments and what the gateways decode


def test_payload_release_args_carry_data_and_the_model_publishes_advanced_keys_only() -> None:
    from test_properties import RedisModel

    redis = RedisModel()
    redis.release(release_args("0000000000000002", 7, ("card:1",), ()))
    args = release_args("0000000000000002", 8, ("card:1", "card:2"), (),
                        data={"card:1": '{"a":1}', "card:2": "null", "card:9": "1"})
    assert json.loads(args[8]) == {"card:1": '{"a":1}', "card:2": "null"}  # texts; card:9 is not released
    redis.release(args)
    assert redis.published[-1].keys == ("card:2",)
    assert redis.published[-1].data == {"card:2": "null"}  # card:1 did not advance: no data either
    assert release_args("0000000000000003", 9, ("k",), ())[8] == ""


def test_payload_data_arg_and_data_of_round_trip_and_drop_garbage() -> None:
    assert data_arg({}) == "" and data_arg({"a": "1"}, ["b"]) == ""
    assert json.loads(data_arg({"a": '{"x":[1,2]}', "b": "null"}, ["a"])) == {"a": '{"x":[1,2]}'}
    assert data_of({"a": '{ "x" : 1 }', "b": "not json", "c": 5}) == {"a": '{"x":1}'}
    assert data_of([]) == {}
    body = {"v": "0000000000000001", "k": ["a"], "p": {}, "ts": 1, "wm": "0000000000000001", "d": {"a": "[1]"}}
    assert decode_published(json.dumps(body)).data == {"a": "[1]"}


def test_payload_spread_parts_carry_their_own_keys_data_and_the_joiner_merges_them() -> None:
    layout = Layout(4)
    keys = tuple(f"card:{i}" for i in range(12))
    data = {k: f"{{\"i\":{i}}}" for i, k in enumerate(keys) if i % 2 == 0}
    parts, _control = release_calls(layout, "00000000000000aa", 5, keys, (), "77", 600, "", "", False, data)
    for p in parts:
        mine = p.args[5:]
        assert (json.loads(p.args[4]) if p.args[4] else {}) == {k: data[k] for k in mine if k in data}
    joiner = Joiner()
    buckets = tuple(sorted(layout.by_bucket(keys)))
    for p in parts:
        body = {"v": "00000000000000aa", "k": p.args[5:], "x": "77"}
        if p.args[4]:
            body["d"] = json.loads(p.args[4])
        bucket = buckets[parts.index(p)]  # release_calls orders its parts by bucket
        assert joiner.feed_part(decode_part(bucket, json.dumps(body)), 0.0) == []
    (done,) = joiner.feed_control(Control("00000000000000aa", (), 5, "00000000000000aa", "", "77", buckets), 0.0) or []
    assert done.data == data and sorted(done.keys) == sorted(keys)
    assert Part(0, "v", ("a",)).data == {}

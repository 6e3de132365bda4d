"""Bounded transactions: cdc.keyset with the demo rules, Template.parent, Rules.for_change at a depth,
and the assembler's degraded, missing-event and lost-END batches. Every degraded form must cover
every key it replaces (never stale) and stay within a tenant where the template allows."""

from __future__ import annotations

from typing import Any

from debezium_json import DEMO_RULES, change, enc
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.assembler import Assembler, whole_tables
from cdc.decode import decode
from cdc.keyset import KeyLimits, KeySet
from cdc.model import Batch, Record, TxBegin, TxEnd
from cdc.rules import Template, colon_parent, load_rules, parse_template
from contract.redis_layout import PrefixSet

RULES = load_rules(DEMO_RULES)
SMALL = KeyLimits(max_keys=20, max_key_bytes=10_000, max_prefixes=4)


def covered(key: str, batch_keys: tuple[str, ...] | list[str], prefixes: tuple[str, ...] | list[str]) -> bool:
    return key in batch_keys or bool(PrefixSet(dict.fromkeys(prefixes, "v")).covering(key))


def card(i: int, tenant: int, board: int) -> dict[str, Any]:
    return {"id": i, "tenant_id": tenant, "board_id": board, "title": "t", "status": "todo", "owner": None,
            "version": 1}


def test_template_parent_drops_one_field_at_a_time() -> None:
    t = parse_template("t", "tenant:{tenant_id}:card:{id}")
    assert t.literals == ("tenant:", ":card:", "")
    assert t.parent("tenant:7:card:5") == "tenant:7:card:"
    assert t.parent("tenant:7:card:") == "tenant:"
    assert t.parent("tenant:") is None
    assert t.parent("board:1") is None


def test_template_parent_is_a_prefix_even_when_values_hold_the_separators() -> None:
    t = parse_template("t", "tenant:{tenant_id}:card:{id}")
    key = t.render({"tenant_id": "a:card:b", "id": "x:card:y"})
    assert key is not None
    parent = t.parent(key)
    assert parent is not None and key.startswith(parent) and len(parent) < len(key)


def test_template_render_prefix_keeps_leading_fields() -> None:
    t = Template("tenant:{tenant_id}:board:{board_id}", ("tenant_id", "board_id"))
    row = {"tenant_id": 7, "board_id": 3}
    assert [t.render_prefix(row, k) for k in (0, 1, 2)] == ["tenant:", "tenant:7:board:", "tenant:7:board:3"]
    assert t.render_prefix({"tenant_id": None, "board_id": 3}, 1) is None


def test_rules_for_change_at_depth_one_gives_tenant_scoped_prefixes() -> None:
    c = change("cards", "c", after=card(5, 7, 3), tx="9:100")
    inv = RULES.for_change(c, depth=1)
    assert inv.keys == ()
    assert set(inv.prefixes) == {"card:", "board:", "tenant:7:card:", "tenant:7:board:"}
    assert set(RULES.for_change(c, depth=2).prefixes) == {"card:", "board:", "tenant:"}


def test_rules_outbox_keys_shorten_at_colons() -> None:
    assert colon_parent("tenant:1:orders") == "tenant:1:"
    assert colon_parent("tenant:") == ""
    assert colon_parent("plain") == ""
    row = {"keys": ["tenant:1:order:7"], "aggregatetype": "order", "aggregateid": "7"}
    inv = RULES.for_change(change("outbox", "c", after=row, tx="9:100"), depth=1)
    assert inv == type(inv)((), ("tenant:1:order:",))


def test_keyset_under_the_limit_carries_keys() -> None:
    ks = KeySet(SMALL, RULES.parent)
    ks.add("public.cards", ["card:1", "board:1"], [])
    assert (list(ks.keys), ks.prefixes, ks.degraded) == (["card:1", "board:1"], {}, False)


def test_keyset_folds_keys_into_one_prefix_per_tenant() -> None:
    ks = KeySet(SMALL, RULES.parent)
    keys = [f"tenant:{t}:card:{i}" for t in (1, 2) for i in range(15)]
    ks.add("public.cards", keys, [])
    assert ks.degraded and not ks.keys
    assert set(ks.prefixes) == {"tenant:1:card:", "tenant:2:card:"}


def test_keyset_deepens_past_max_prefixes_and_stops_at_literals() -> None:
    ks = KeySet(SMALL, RULES.parent)
    ks.add("public.cards", [f"tenant:{t}:card:{t}" for t in range(30)], [])
    assert set(ks.prefixes) == {"tenant:"}
    ks.add("public.cards", [], ["card:", "board:", "tenant:"])
    assert set(ks.prefixes) == {"tenant:", "card:", "board:"}


KEY_PARTS = st.text(alphabet="ab:7x", min_size=0, max_size=4)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(KEY_PARTS, KEY_PARTS, st.sampled_from(["cards", "outbox"])), min_size=1,
                     max_size=80),
       limits=st.tuples(st.integers(1, 10), st.integers(1, 6)))
def test_keyset_every_key_stays_covered(rows: list[tuple[str, str, str]], limits: tuple[int, int]) -> None:
    """Whatever the keys (values holding the template's own separators too), each one added is still
    a kept key or under a kept prefix, and the prefixes never exceed the limit unless nothing shortens."""
    ks = KeySet(KeyLimits(max_keys=limits[0], max_key_bytes=10_000, max_prefixes=limits[1]), RULES.parent)
    added = []
    for tenant, ident, table in rows:
        key = f"tenant:{tenant}:card:{ident}" if table == "cards" else f"{tenant}:{ident}"
        ks.add(f"public.{table}", [key], [])
        added.append(key)
    for key in added:
        assert covered(key, list(ks.keys), list(ks.prefixes)), key
    if ks.degraded:
        assert len(ks.keys) == 0


def _records(n: int, xid: str = "9", end_lsn: int = 5000, collections: list[Any] | None = None) -> list[Record]:
    out: list[Record] = [TxBegin(xid)]
    out += [change("cards", "c", after=card(i, 1 + i % 2, 1), tx=f"{xid}:{100 + i}") for i in range(n)]
    value = {"status": "END", "id": f"{xid}:{end_lsn}", "event_count": n, "ts_ms": 1,
             "data_collections": collections if collections is not None else [
                 {"data_collection": "public.cards", "event_count": n}]}
    out.append(decode(enc({"id": f"{xid}:{end_lsn}"}), enc(value)))
    return out


def _feed(assembler: Assembler, records: list[Record]) -> list[Batch]:
    return [b for i, r in enumerate(records) if (b := assembler.feed(r, i)) is not None]


def test_assembler_large_transaction_is_one_degraded_batch() -> None:
    (batch,) = _feed(Assembler(RULES, limits=SMALL), _records(200))
    assert batch.degraded and batch.keys == ()
    assert set(batch.prefixes) == {"card:", "board:", "tenant:1:card:", "tenant:2:card:", "tenant:1:board:",
                                   "tenant:2:board:"} or set(batch.prefixes) == {"card:", "board:", "tenant:"}
    for i in range(200):
        assert covered(f"tenant:{1 + i % 2}:card:{i}", batch.keys, batch.prefixes)


def test_assembler_missing_events_invalidate_the_table_whole() -> None:
    records = _records(3, collections=[{"data_collection": "public.cards", "event_count": 4},
                                       {"data_collection": "io.debezium.connector.postgresql."
                                        "LogicalDecodingMessageMonitor$LogicalDecodingMessageId@1", "event_count": 1}])
    (batch,) = _feed(Assembler(RULES), records)
    assert batch.missing == (("public.cards", 1),)
    assert {"card:", "board:", "tenant:"} <= set(batch.prefixes)


def test_assembler_counted_events_that_all_arrived_add_nothing() -> None:
    (batch,) = _feed(Assembler(RULES), _records(3))
    assert batch.missing == () and batch.prefixes == ()


def test_assembler_transaction_that_lost_its_end_rides_with_the_next() -> None:
    lost = _records(2, xid="8", end_lsn=4000)[:-1]  # END dropped
    batches = _feed(Assembler(RULES), [*lost, *_records(1, xid="9", end_lsn=5000)])
    (batch,) = batches
    assert batch.tx_id == "9"
    assert {"card:0", "card:1", "tenant:2:card:1"} <= set(batch.keys)


def test_whole_tables_covers_the_batch() -> None:
    (batch,) = _feed(Assembler(RULES), _records(3))
    small = whole_tables(batch, RULES)
    assert small.degraded and small.version == batch.version
    for key in batch.keys:
        assert covered(key, small.keys, small.prefixes)


def test_tx_end_decodes_data_collections() -> None:
    end = _records(1)[-1]
    assert isinstance(end, TxEnd) and end.collections == (("public.cards", 1),)


def test_assembler_flush_batch_carries_the_flush_lapse() -> None:
    assembler = Assembler(RULES)
    assembler.flush_next = True
    (batch,) = _feed(assembler, _records(1))
    assert batch.lapse == "flush" and "" in batch.prefixes
    (later,) = _feed(assembler, _records(1, xid="10", end_lsn=6000))
    assert later.lapse == ""

"""Table tests of cdc.decode over every line of the real Debezium captures, and over malformed input."""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
from debezium_json import (
    Captured,
    all_captured,
    change_value,
    enc,
    end_json,
    sample,
    stack_capture,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc import decode as decode_module
from cdc.decode import MAX_RECORD_BYTES, decode
from cdc.errors import DecodeError
from cdc.model import Heartbeat, RowChange, Tombstone, TxBegin, TxEnd

CAPTURED = all_captured()


def _expected_kind(c: Captured) -> str:
    """What the record is, judged from where Debezium routed it (and, in the one-topic stack capture, its key)."""
    if c.where.startswith("outbox.event."):
        return "unknown_record"  # EventRouter output: the value is the raw payload -> dead-letter topic
    if c.value is None:
        return "Tombstone"
    key = json.loads(c.key) if c.key is not None else None
    if c.where.startswith("__debezium-heartbeat.") or (isinstance(key, dict) and "serverName" in key):
        return "Heartbeat"
    if c.where.endswith(".transaction") or (isinstance(key, dict) and isinstance(key.get("id"), str)):
        return {"BEGIN": "TxBegin", "END": "TxEnd"}[c.body["status"]]
    return "RowChange"


@pytest.mark.parametrize("captured", CAPTURED, ids=[c.name for c in CAPTURED])
def test_decode_every_captured_record(captured: Captured) -> None:
    kind = _expected_kind(captured)
    if kind == "unknown_record":
        with pytest.raises(DecodeError) as info:
            decode(captured.key, captured.value)
        assert info.value.code == "unknown_record"
        return
    record = decode(captured.key, captured.value)
    assert type(record).__name__ == kind
    body: Any = captured.body
    if isinstance(record, Heartbeat):
        assert record.ts_ms == body["ts_ms"]
    elif isinstance(record, TxBegin):
        assert record.tx_id == body["id"].split(":")[0]
    elif isinstance(record, TxEnd):
        xid, lsn = body["id"].split(":")
        assert (record.tx_id, record.end_lsn, record.event_count, record.ts_ms) == (
            xid, int(lsn), body["event_count"], body["ts_ms"])
    elif isinstance(record, RowChange):
        src = body["source"]
        assert (record.schema, record.table, record.op) == (src["schema"], src["table"], body["op"])
        assert (record.before, record.after) == (body["before"], body["after"])
        assert record.lsn == src["lsn"]
        assert record.ts_ms == src["ts_ms"]
        assert record.tx_id == (None if body["transaction"] is None else body["transaction"]["id"].split(":")[0])
        key = json.loads(captured.key) if captured.key is not None else None
        assert record.key == key
    else:
        assert isinstance(record, Tombstone)


@pytest.mark.parametrize(("name", "expected"), [
    ("stack", {"Heartbeat": 15, "TxBegin": 17, "TxEnd": 16, "RowChange": 19}),
    ("run1", {"Heartbeat": 15, "TxBegin": 7, "TxEnd": 7, "RowChange": 8, "Tombstone": 2}),
    ("runt", {"Heartbeat": 99, "RowChange": 7, "Tombstone": 2}),
    ("outbox1", {"Heartbeat": 93, "unknown_record": 2}),
    ("prec", {"RowChange": 7, "Tombstone": 2}),
])
def test_decode_capture_record_counts(name: str, expected: dict[str, int]) -> None:
    rows = stack_capture() if name == "stack" else sample(name)
    counts: collections.Counter[str] = collections.Counter()
    for c in rows:
        try:
            counts[type(decode(c.key, c.value)).__name__] += 1
        except DecodeError as exc:
            counts[exc.code] += 1
    assert dict(counts) == expected


def _stack(offset: int) -> Captured:
    (c,) = [c for c in stack_capture() if c.offset == offset]
    return c


def test_decode_end_lsn_is_the_end_ids_lsn_not_the_begins() -> None:
    begin, end = _stack(24), _stack(27)
    assert decode(begin.key, begin.value) == TxBegin("734")
    assert decode(end.key, end.value) == TxEnd(tx_id="734", end_lsn=26620224, ts_ms=1795802848567, event_count=2,
                                               collections=(("public.cards", 2),))


def test_decode_change_tx_id_drops_the_per_change_lsn() -> None:
    first, second = (decode(c.key, c.value) for c in (_stack(25), _stack(26)))
    assert isinstance(first, RowChange) and isinstance(second, RowChange)
    assert first.tx_id == second.tx_id == "734"
    assert (first.lsn, second.lsn) == (26619688, 26619960)
    assert first.before is not None and first.after is not None
    assert (first.before["board_id"], first.after["board_id"]) == (1, 2)


def test_decode_truncate_in_a_transaction_has_no_images_and_no_key() -> None:
    c = _stack(29)
    record = decode(c.key, c.value)
    assert isinstance(record, RowChange)
    assert (record.op, record.qualified, record.before, record.after, record.key, record.tx_id) == (
        "t", "public.outbox", None, None, None, "735")


def test_decode_truncate_without_transaction_metadata() -> None:
    (c,) = [c for c in sample("runt") if c.body is not None and c.body.get("op") == "t"]
    record = decode(c.key, c.value)
    assert isinstance(record, RowChange)
    assert (record.op, record.qualified, record.tx_id, record.lsn) == ("t", "public.items_default", None, 26813872)


def test_decode_snapshot_read_has_no_transaction() -> None:
    first = sample("prec")[0]
    record = decode(first.key, first.value)
    assert isinstance(record, RowChange)
    assert (record.op, record.tx_id, record.key) == ("r", None, {"id": 1})
    assert record.after is not None and record.after["price"] == "AJY="  # decimal.handling.mode=precise: bytes


def test_decode_empty_transaction_end() -> None:
    ends = [decode(c.key, c.value) for c in sample("run1") if c.where == "app.transaction"]
    assert TxEnd(tx_id="738", end_lsn=26425944, ts_ms=1795800754284, event_count=0) in ends


def test_decode_event_router_output_is_unknown_record() -> None:
    routed = [c for c in sample("outbox1") if c.where.startswith("outbox.event.")]
    assert len(routed) == 2
    for c in routed:
        with pytest.raises(DecodeError) as info:
            decode(c.key, c.value)
        assert info.value.code == "unknown_record"


def test_decode_null_value_is_a_tombstone_with_or_without_key() -> None:
    assert decode(enc({"id": 9}), None) == Tombstone()
    assert decode(None, None) == Tombstone()


def test_decode_heartbeat_needs_the_server_name_key() -> None:
    assert decode(enc({"serverName": "app"}), enc({"ts_ms": 5})) == Heartbeat(5)
    with pytest.raises(DecodeError) as info:
        decode(enc({"id": 1}), enc({"ts_ms": 5}))
    assert info.value.code == "unknown_record"


def _change(**overrides: Any) -> bytes:
    body = change_value("cards", "c", after={"id": 1}, tx="734:26619688", lsn=26619688)
    body.update(overrides)
    return enc(body)


def _with_source(**fields: Any) -> bytes:
    body = change_value("cards", "c", after={"id": 1}, tx="734:26619688", lsn=26619688)
    body["source"].update(fields)
    return enc(body)


def _end(**overrides: Any) -> bytes:
    body = json.loads(end_json("734", 26620224, 2)[1])
    body.update(overrides)
    return enc(body)


KEY = enc({"id": 1})
MALFORMED: list[tuple[str, bytes | None, bytes, str]] = [
    ("not_json", KEY, b"{not json", "bad_json"),
    ("invalid_utf8", KEY, b"\xff\xfe{}", "bad_json"),
    ("truncated_json", KEY, _change()[:-5], "bad_json"),
    ("key_not_json", b"{id:1", _change(), "bad_json"),
    ("deeply_nested_json", KEY, b"[" * 100_000, "bad_json"),
    ("integer_too_long_to_parse", KEY, b"1" * 5000, "bad_json"),
    ("json_array", KEY, b"[1, 2]", "bad_envelope"),
    ("json_string", KEY, b'"order-0"', "bad_envelope"),
    ("json_number", KEY, b"42", "bad_envelope"),
    ("json_null_value", KEY, b"null", "bad_envelope"),
    ("message_without_message_field", KEY, _change(op="m"), "bad_field"),
    ("unknown_op_letter", KEY, _change(op="x"), "unknown_op"),
    ("op_null", KEY, _change(op=None), "unknown_op"),
    ("op_unhashable", KEY, _change(op=["c"]), "unknown_op"),
    ("missing_source", KEY, _change(source=None), "bad_field"),
    ("source_not_object", KEY, _change(source=["public", "cards"]), "bad_field"),
    ("source_without_table", KEY, _with_source(table=None), "bad_field"),
    ("source_empty_table", KEY, _with_source(table=""), "bad_field"),
    ("source_schema_not_string", KEY, _with_source(schema=1), "bad_field"),
    ("source_lsn_missing", KEY, _with_source(lsn=None), "bad_field"),
    ("source_lsn_string", KEY, _with_source(lsn="26619688"), "bad_field"),
    ("source_lsn_bool", KEY, _with_source(lsn=True), "bad_field"),
    ("source_lsn_negative", KEY, _with_source(lsn=-1), "bad_field"),
    ("source_lsn_above_64_bits", KEY, _with_source(lsn=1 << 64), "bad_field"),
    ("source_ts_ms_string", KEY, _with_source(ts_ms="now"), "bad_field"),
    ("op_c_without_after", KEY, _change(op="c", after=None), "bad_field"),
    ("op_r_without_after", KEY, _change(op="r", after=None), "bad_field"),
    ("op_u_without_after", KEY, _change(op="u", before={"id": 1}, after=None), "bad_field"),
    ("op_d_without_before", KEY, _change(op="d", before=None, after=None), "bad_field"),
    ("before_not_object", KEY, _change(op="u", before=[1], after={"id": 1}), "bad_field"),
    ("after_not_object", KEY, _change(after="row"), "bad_field"),
    ("transaction_not_object", KEY, _change(transaction="734:26619688"), "bad_transaction"),
    ("transaction_without_id", KEY, _change(transaction={"total_order": 1}), "bad_transaction"),
    ("transaction_id_without_lsn", KEY, _change(transaction={"id": "734"}), "bad_transaction"),
    ("transaction_id_empty_lsn", KEY, _change(transaction={"id": "734:"}), "bad_transaction"),
    ("transaction_id_empty_xid", KEY, _change(transaction={"id": ":26619688"}), "bad_transaction"),
    ("transaction_id_hex_lsn", KEY, _change(transaction={"id": "734:19616A8"}), "bad_transaction"),
    ("end_id_not_string", KEY, _end(id=734), "bad_transaction"),
    ("end_id_without_colon", KEY, _end(id="734"), "bad_transaction"),
    ("end_id_negative_lsn", KEY, _end(id="734:-5"), "bad_transaction"),
    ("end_id_superscript_digit", KEY, _end(id="734:²"), "bad_transaction"),
    ("end_id_non_ascii_digits", KEY, _end(id="734:٢٦٦"), "bad_transaction"),
    ("end_id_lsn_above_64_bits", KEY, _end(id=f"734:{1 << 64}"), "bad_transaction"),
    ("end_id_lsn_huge", KEY, _end(id="734:" + "9" * 5000), "bad_transaction"),
    ("begin_bad_id", KEY, enc({"status": "BEGIN", "id": "nope", "event_count": None}), "bad_transaction"),
    ("end_event_count_null", KEY, _end(event_count=None), "bad_field"),
    ("end_event_count_missing", KEY, enc({"status": "END", "id": "734:26620224"}), "bad_field"),
    ("end_ts_ms_string", KEY, _end(ts_ms="x"), "bad_field"),
    ("heartbeat_ts_ms_string", enc({"serverName": "app"}), enc({"ts_ms": "x"}), "bad_field"),
    ("empty_object", KEY, b"{}", "unknown_record"),
    ("foreign_object", KEY, enc({"id": 0, "total": 9.99}), "unknown_record"),
    ("status_without_id", KEY, enc({"status": "BEGIN"}), "unknown_record"),
    ("unknown_status", KEY, enc({"status": "ROLLBACK", "id": "734:1"}), "unknown_record"),
    ("heartbeat_without_key", None, enc({"ts_ms": 5}), "unknown_record"),
    ("heartbeat_with_extra_field", enc({"serverName": "app"}), enc({"ts_ms": 5, "x": 1}), "unknown_record"),
    ("too_large", KEY, b" " * (MAX_RECORD_BYTES + 1), "too_large"),
]


@pytest.mark.parametrize(("key", "value", "code"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_decode_malformed_raises_decode_error_with_stable_code(key: bytes | None, value: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(key, value)
    assert info.value.code == code
    assert str(info.value).startswith(f"{code}: ")
    assert info.value.retriable is False


def test_decode_malformed_cases_are_built_from_a_valid_change() -> None:
    """The malformed change cases differ from this valid one in one field only."""
    record = decode(KEY, _change())
    assert isinstance(record, RowChange)
    assert (record.qualified, record.op, record.tx_id, record.lsn) == ("public.cards", "c", "734", 26619688)
    assert decode(KEY, _end()) == TxEnd("734", 26620224, 1795802848567, 2)


# -- the changes' fast path: the same record, or the slow path's error, for any envelope

MISSING = object()
FIELD_VALUES: dict[str, list[Any]] = {
    "op": ["c", "u", "d", "r", "t", "m", "x", "", None, 1, ["c"]],
    "before": [None, {"id": 1}, {}, [1], "row", 0],
    "after": [None, {"id": 2, "n": None}, {}, [1], "row", True],
    "transaction": [None, {"id": "734:26619688"}, {"id": "734:" + "9" * 19}, {"id": f"734:{(1 << 64) - 1}"},
                    {"id": f"734:{1 << 64}"}, {"id": "734:" + "1" * 21}, {"id": "734"}, {"id": "734:"},
                    {"id": ":1"}, {"id": "734:²"}, {"id": "734:-1"}, {"id": "a:b:1"}, {"id": 734}, {}, "734:1", []],
}
SOURCE_VALUES: dict[str, list[Any]] = {
    "schema": ["public", "", None, 1],
    "table": ["cards", "", None, 7, ["cards"]],
    "lsn": [26619688, 0, (1 << 64) - 1, 1 << 64, -1, None, True, False, "1", 1.5],
    "ts_ms": [1_795_802_848_567, 0, -(1 << 63), -(1 << 63) - 1, (1 << 64) - 1, 1 << 64, None, True, "now", 2.0],
}


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid change (any op) with up to three fields replaced by another value (valid or not) or removed."""
    body = change_value("cards", draw(st.sampled_from("cudrt")), before={"id": 1}, after={"id": 2},
                        tx="734:26619688", lsn=26619688)
    fields = [(body, name, values) for name, values in FIELD_VALUES.items()]
    fields += [(body["source"], name, values) for name, values in SOURCE_VALUES.items()]
    for target, name, values in draw(st.lists(st.sampled_from(fields), max_size=3)):
        value = draw(st.sampled_from([*values, MISSING]))
        if value is MISSING:
            target.pop(name, None)
        else:
            target[name] = value
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        body["source"] = draw(st.sampled_from([None, ["public"], MISSING]))
        if body["source"] is MISSING:
            del body["source"]
    return body


def _outcome(change: Any, key: Any, body: dict[str, Any]) -> Any:
    try:
        return change(key, body)
    except DecodeError as exc:
        return ("error", exc.code, str(exc))


@settings(max_examples=2000, deadline=None)
@given(body=envelopes(), key=st.sampled_from([None, {"id": 1}, [1], 5]))
def test_decode_change_fast_path_agrees_with_the_checked_one(body: dict[str, Any], key: Any) -> None:
    fast, checked = _outcome(decode_module._change, key, body), _outcome(decode_module._checked_change, key, body)
    assert fast == checked
    assert type(fast) is type(checked)

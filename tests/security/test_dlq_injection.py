"""Malformed records injected into the real input topic: each lands in the dead-letter topic with its
error code, the consumer stays ready, and a real row change written afterwards still reaches a client.

Runs against the shared native stack (FRESHWIRE_KEEP_STACK=1 keeps it up for the other jobs). Every
record is checked with the decoder first, so none can be released into the shared Redis by mistake.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from cdc.decode import decode
from cdc.errors import DecodeError
from connectors.stack_settings import StackSettings
from tests.e2e.helpers import client, floors, new_board, new_card, until

N_RECORDS = 50
INPUT_TOPIC, DLQ_TOPIC = "freshwire.cdc", "freshwire.dlq"
DLQ_CODES = {"bad_json", "bad_envelope", "bad_field", "bad_transaction", "unknown_op", "unknown_record",
             "too_large"}  # decoder_failed is documented too, but would mean a decoder bug
CDC_READYZ = "http://127.0.0.1:19108/readyz"

# A real change event of the stack (public.cards update, captured), and real transaction markers.
CHANGE: dict[str, Any] = {
    "before": {"id": 1, "tenant_id": 1, "board_id": 2, "title": "a", "status": "todo", "owner": None, "version": 1},
    "after": {"id": 1, "tenant_id": 1, "board_id": 2, "title": "b", "status": "todo", "owner": None, "version": 2},
    "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": 1795802843227,
               "snapshot": "false", "db": "app", "schema": "public", "table": "cards", "txId": 728,
               "lsn": 26618400},
    "transaction": {"id": "728:26618400", "total_order": 1, "data_collection_order": 1},
    "op": "u", "ts_ms": 1795802843268,
}
BEGIN: dict[str, Any] = {"status": "BEGIN", "id": "728:26618400", "event_count": None, "ts_ms": 1795802843227}
END: dict[str, Any] = {"status": "END", "id": "728:26618728", "event_count": 1, "ts_ms": 1795802843227}
MESSAGE: dict[str, Any] = {"op": "m", "message": {"prefix": "freshwire.token", "content": ""},
                           "transaction": {"id": "728:26618400"}, "source": CHANGE["source"]}

_any = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=8)
_not_int = st.one_of(st.text(max_size=10), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                     st.just({"$numberLong": "1"}))
_not_str = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
_not_row = st.one_of(st.text(max_size=10), st.integers(), st.floats(), st.booleans(),
                     st.lists(st.integers(), max_size=3))
_bad_tx_id = st.one_of(_not_str, st.sampled_from(["728", ":26618400", "728:", "728:abc", "728:-1", "728:1.5",
                                                  "728:" + "9" * 21, "728:18446744073709551616", "728:\u0663",
                                                  "728: 1", ""]))
_huge = st.one_of(st.integers(2**64, 10**40), st.integers(-10**40, -1), st.just(float("inf")),
                  st.just(float("-inf")), st.just(float("nan")))

# (envelope, path inside it, values of the wrong type for that field)
MUTATIONS: list[tuple[dict[str, Any], tuple[str, ...], st.SearchStrategy[Any]]] = [
    (CHANGE, ("op",), _not_str | st.sampled_from(["", "U", "x", "cc", "delete", "r\x00"])),
    (CHANGE, ("source",), _not_row | st.none()),
    (CHANGE, ("source", "schema"), _not_str),
    (CHANGE, ("source", "table"), _not_str | st.just("")),
    (CHANGE, ("source", "lsn"), _not_int | _huge),
    (CHANGE, ("source", "ts_ms"), _not_int),
    (CHANGE, ("transaction",), _not_row),
    (CHANGE, ("transaction", "id"), _bad_tx_id),
    (CHANGE, ("before",), _not_row),
    (CHANGE, ("after",), _not_row | st.none()),
    (BEGIN, ("id",), _bad_tx_id),
    (END, ("id",), _bad_tx_id),
    (END, ("event_count",), _not_int),
    (END, ("ts_ms",), _not_int),
    (MESSAGE, ("message",), _not_row | st.none()),
    (MESSAGE, ("message", "prefix"), _not_str),
    (MESSAGE, ("transaction",), _not_row),
    (MESSAGE, ("transaction", "id"), _bad_tx_id),
]


def _mutated(base: dict[str, Any], path: tuple[str, ...], value: Any) -> bytes:
    body = copy.deepcopy(base)
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return json.dumps(body).encode()


def _wrong_typed(i: int) -> st.SearchStrategy[bytes]:
    base, path, wrong = MUTATIONS[i]
    return wrong.map(lambda v: _mutated(base, path, v))


wrong_types = st.sampled_from(range(len(MUTATIONS))).flatmap(_wrong_typed)
values = st.one_of(
    st.binary(max_size=300),                                                           # random bytes
    _any.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),  # JSON, not an object
    st.dictionaries(st.text(max_size=8), _any, max_size=5).map(lambda v: json.dumps(v).encode()),  # wrong shape
    st.integers(4301, 50_000).map(lambda n: b'{"op":"c","source":{"lsn":' + b"9" * n + b"}}"),  # huge numbers
    # deep nesting, far past any recursion limit (hypothesis raises the limit while it runs the oracle)
    st.integers(10_000, 100_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(10_000, 50_000).map(lambda n: b'{"op":"c","after":' + b'{"a":' * n + b"1" + b"}" * n + b"}"),
    st.text(max_size=50).map(lambda t: t.encode("utf-16")),                            # not UTF-8
    wrong_types, wrong_types, wrong_types,                      # Debezium-shaped with wrong types: weighted up
)
key_styles = st.sampled_from(["object", "object", "object", "string", "not-json"])  # not-json: bad_json whatever


def _key(style: str, tag: str) -> bytes:
    if style == "object":
        return json.dumps({"fw_security": tag}).encode()
    if style == "string":
        return json.dumps(tag).encode()
    return b"\xfe not json " + tag.encode()


def _huge_ts(base: dict[str, Any], *path: str) -> bytes:
    marker = 1234567890123
    return _mutated(base, path, marker).replace(str(marker).encode(), str(10**400).encode())


# Records the decoder used to accept, and which then stopped the consumer for good (each restart replays
# them): a lone surrogate makes the Redis client raise UnicodeEncodeError, and a timestamp beyond 64 bits
# raises OverflowError in the lag metric (and in the gateway's writer). Both escaped the effect retries.
POISON: dict[str, tuple[bytes, str]] = {
    "lone-surrogate-escape": (_mutated(CHANGE, ("after", "title"), "\ud800"), "bad_json"),
    "lone-surrogate-utf8-bytes": (_mutated(CHANGE, ("after", "title"), "@").replace(b'"@"', b'"\xed\xa0\x80"'),
                                  "bad_json"),
    "lone-surrogate-table": (_mutated(CHANGE, ("source", "table"), "cards\udfff"), "bad_json"),
    "lone-surrogate-in-a-list": (_mutated({**CHANGE, "op": "c"}, ("after",), {"keys": ["a\udc00"]}), "bad_json"),
    # 10**400 overflows a double: the JSON parser (orjson) refuses it before any field is read.
    "huge-end-ts": (_huge_ts(END, "ts_ms"), "bad_json"),
    "huge-change-ts": (_huge_ts(CHANGE, "source", "ts_ms"), "bad_json"),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_dlq_poison_records_rejected_by_decoder(case: str) -> None:
    value, code = POISON[case]
    with pytest.raises(DecodeError) as info:
        decode(b'{"id":1}', value)
    assert info.value.code == code


@pytest.mark.parametrize("base", [CHANGE, BEGIN, END, MESSAGE], ids=["change", "begin", "end", "message"])
def test_dlq_unmutated_envelopes_are_valid(base: dict[str, Any]) -> None:
    """The wrong-typed envelopes below differ from a valid record only by the mutated field."""
    decode(b'{"id":1}', json.dumps(base).encode())


def _expected_code(key: bytes, value: bytes) -> str | None:
    """The decoder's verdict, computed here: None when the record is (unexpectedly) a valid one."""
    try:
        decode(key, value)
    except DecodeError as exc:
        return exc.code
    return None


def _high_watermarks(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in meta.partitions]


def _await_ready(timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(CDC_READYZ, timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        assert time.monotonic() < deadline, f"cdc consumer not ready: {last}"
        time.sleep(0.2)


@pytest.mark.stack
def test_dlq_malformed_records_dead_lettered_and_pipeline_continues(stack_settings: StackSettings) -> None:
    s = stack_settings
    run = uuid.uuid4().hex[:12]
    sent: dict[bytes, tuple[bytes, str]] = {}  # key -> (value, the decoder's code)
    reader = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"security-dlq-{run}",
                       "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5})
    try:
        start = _high_watermarks(reader, DLQ_TOPIC)

        @settings(max_examples=N_RECORDS, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                         HealthCheck.data_too_large])
        @given(value=values, style=key_styles)
        def produce(value: bytes, style: str) -> None:
            key = _key(style, f"{run}-{len(sent)}")
            code = _expected_code(key, value)
            assert code is not None, f"generated a valid record: {value[:300]!r}"
            assert code in DLQ_CODES
            sent[key] = (value, code)
            producer.produce(INPUT_TOPIC, key=key, value=value)
            producer.poll(0)

        produce()
        assert len(sent) >= N_RECORDS
        for i, (value, code) in enumerate(POISON.values()):
            key = _key("object", f"{run}-poison-{i}")
            assert _expected_code(key, value) == code
            sent[key] = (value, code)
            producer.produce(INPUT_TOPIC, key=key, value=value)
        assert producer.flush(30) == 0, "records not acknowledged by Kafka"

        reader.assign(start)
        found: dict[bytes, Any] = {}
        deadline = time.monotonic() + 60
        while len(found) < len(sent) and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is not None and msg.error() is None and (got := msg.key()) is not None and got in sent:
                found[got] = msg
        missing = [sent[k][0][:80] for k in sent if k not in found]
        assert not missing, f"{len(missing)} of {len(sent)} records not dead-lettered, e.g. {missing[:3]}"
        for key, msg in found.items():
            value, code = sent[key]
            headers = dict(msg.headers() or [])
            assert msg.value() == value
            assert headers.get("freshwire.error.code", b"").decode() == code, (headers, value[:200])
            assert headers["freshwire.source.topic"] == INPUT_TOPIC.encode()
            assert int(headers["freshwire.source.offset"]) >= 0
    finally:
        reader.close()

    _await_ready()
    board = new_board(s)
    board_key = f"board:{board}"

    async def real_change_reaches_a_client() -> None:
        async with client(s, ["board:*"]) as c:
            await c.subscribe([board_key])
            new_card(s, board)  # moves floors[board_key] to a position inside the card's transaction
            await until(lambda: (c.versions.get(board_key) or "") > floors[board_key],
                        what="the card insert's invalidation")

    asyncio.run(real_change_reaches_a_client())
    _await_ready()

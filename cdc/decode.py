"""Decode Debezium's JSON envelope (converters with schemas disabled) into typed records.

Pure: bytes in, a record or a DecodeError out. Anything not understood raises DecodeError with a
stable code, so the consumer can send the original bytes to the dead-letter topic.
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from cdc.errors import DecodeError
from cdc.model import Heartbeat, LogicalMessage, Op, Record, Row, RowChange, Tombstone, TxBegin, TxEnd
from contract.versions import MAX_LSN

OPS: frozenset[str] = frozenset({"c", "u", "d", "r", "t"})
MAX_RECORD_BYTES = 16 * 1024 * 1024
INT_MIN = -(1 << 63)  # Debezium writes Java longs (LSNs: unsigned 64 bits, up to MAX_LSN)


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError("bad_field", f"{what} must be an integer, got {value!r}")
    if not INT_MIN <= value <= MAX_LSN:  # beyond 64 bits it is no Debezium value, and overflows floats downstream
        raise DecodeError("bad_field", f"{what} out of range: {str(value)[:40]}")
    return value


def _row(value: Any, what: str) -> Row | None:
    if value is None or isinstance(value, dict):
        return cast(Row | None, value)
    raise DecodeError("bad_field", f"{what} must be an object or null")


def _xid(tx_id: Any) -> str | None:
    """The txId part of a valid 'txId:LSN' (what _split_tx_id accepts), None for anything else: the
    changes' fast path, which leaves the errors to _split_tx_id."""
    if type(tx_id) is not str:
        return None
    xid, sep, lsn = tx_id.partition(":")
    # 19 digits never pass MAX_LSN (20 digits): only a 20-digit LSN needs its value checked.
    if sep and xid and lsn.isdigit() and lsn.isascii() and (len(lsn) < 20 or (len(lsn) == 20 and int(lsn) <= MAX_LSN)):
        return xid
    return None


def _split_tx_id(tx_id: Any) -> tuple[str, int]:
    """Debezium's transaction id is 'txId:LSN'; the LSN part differs between BEGIN, changes and END."""
    if not isinstance(tx_id, str) or ":" not in tx_id:
        raise DecodeError("bad_transaction", f"transaction id must be 'txId:LSN', got {tx_id!r}")
    xid, _, lsn = tx_id.partition(":")
    if not xid or not (lsn.isascii() and lsn.isdigit()) or len(lsn) > 20 or int(lsn) > MAX_LSN:
        raise DecodeError("bad_transaction", f"transaction id must be 'txId:LSN', got {tx_id!r}")
    return xid, int(lsn)


def _transaction(value: dict[str, Any]) -> Record:
    xid, lsn = _split_tx_id(value.get("id"))
    if value["status"] == "BEGIN":
        return TxBegin(tx_id=xid)
    count = value.get("event_count")
    return TxEnd(tx_id=xid, end_lsn=lsn, ts_ms=_int(value.get("ts_ms", 0), "ts_ms"),
                 event_count=_int(count, "event_count"), collections=_collections(value.get("data_collections")))


def _collections(value: Any) -> tuple[tuple[str, int], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DecodeError("bad_transaction", "data_collections must be a list")
    found = []
    for item in value:
        name = item.get("data_collection") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise DecodeError("bad_transaction", "data_collections entries need a data_collection name")
        found.append((name, _int(item.get("event_count"), "data_collections.event_count")))
    return tuple(found)


# The ops whose image must be there (c, r, u: after; d: before); t needs none.
_NEEDS_AFTER = frozenset({"c", "r", "u"})


def _change(key: Any, value: dict[str, Any]) -> RowChange:
    """A change, by the fast path when the envelope is well formed (nearly always: the consumer's
    hottest code), else by `_checked_change`, which names what is wrong. Both return the same record."""
    op = value.get("op")
    source = value.get("source")
    if type(source) is dict and type(op) is str:
        schema, table, lsn = source.get("schema"), source.get("table"), source.get("lsn")
        ts_ms = source.get("ts_ms", 0)
        before, after, tx = value.get("before"), value.get("after"), value.get("transaction")
        xid = None if tx is None or type(tx) is not dict else _xid(tx.get("id"))
        if (type(schema) is str and type(table) is str and table and type(lsn) is int and 0 <= lsn <= MAX_LSN
                and type(ts_ms) is int and INT_MIN <= ts_ms <= MAX_LSN
                and (before is None or type(before) is dict) and (after is None or type(after) is dict)
                and (tx is None or xid is not None)
                and (after is not None if op in _NEEDS_AFTER else before is not None if op == "d" else op == "t")):
            return RowChange(schema, table, op, before, after,  # type: ignore[arg-type]  # op is in OPS
                             key if isinstance(key, dict) else None, xid, lsn, ts_ms)
    return _checked_change(key, value)


def _checked_change(key: Any, value: dict[str, Any]) -> RowChange:
    op = value.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise DecodeError("unknown_op", f"unsupported op {op!r}")
    source = value.get("source")
    if not isinstance(source, dict):
        raise DecodeError("bad_field", "source must be an object")
    schema, table = source.get("schema"), source.get("table")
    if not isinstance(schema, str) or not isinstance(table, str) or not table:
        raise DecodeError("bad_field", "source.schema and source.table must be strings")
    tx = value.get("transaction")
    if tx is not None and not isinstance(tx, dict):
        raise DecodeError("bad_transaction", "transaction must be an object or null")
    lsn = _int(source.get("lsn"), "source.lsn")
    if not 0 <= lsn <= MAX_LSN:
        raise DecodeError("bad_field", f"source.lsn out of range: {lsn}")
    before, after = _row(value.get("before"), "before"), _row(value.get("after"), "after")
    if op in ("c", "r") and after is None:
        raise DecodeError("bad_field", f"op {op} without an after image")
    if op == "d" and before is None:
        raise DecodeError("bad_field", "op d without a before image")
    if op == "u" and after is None:
        raise DecodeError("bad_field", "op u without an after image")
    return RowChange(
        schema=schema,
        table=table,
        op=cast(Op, op),
        before=before,
        after=after,
        key=key if isinstance(key, dict) else None,
        tx_id=None if tx is None else _split_tx_id(tx.get("id"))[0],
        lsn=lsn,
        ts_ms=_int(source.get("ts_ms", 0), "source.ts_ms"),
    )


def _message(value: dict[str, Any]) -> LogicalMessage:
    message = value.get("message")
    tx = value.get("transaction")
    if not isinstance(message, dict) or not isinstance(message.get("prefix"), str):
        raise DecodeError("bad_field", "op m without message.prefix")
    if tx is not None and not isinstance(tx, dict):
        raise DecodeError("bad_transaction", "transaction must be an object or null")
    return LogicalMessage(tx_id=None if tx is None else _split_tx_id(tx.get("id"))[0], prefix=message["prefix"])


def decode(key: bytes | None, value: bytes | None) -> Record:
    """Decode one Kafka record produced by the Debezium Postgres connector."""
    if value is None:
        return Tombstone()
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError("too_large", f"value of {len(value)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        # orjson: the consumer's hottest call (3x the standard library's speed on Debezium envelopes). It
        # refuses invalid UTF-8, lone surrogates (which Redis could not store), NaN and nesting past 1024.
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_json", f"value is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError("bad_envelope", "value must be a JSON object")
    if body.get("status") in ("BEGIN", "END") and "id" in body:
        return _transaction(body)  # its key is not needed: not decoded
    if body.get("op") == "m":
        return _message(body)
    if key is None:
        decoded_key = None
    else:
        try:
            decoded_key = orjson.loads(key)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("bad_json", f"key is not JSON: {exc}") from None
    if "op" in body:
        return _change(decoded_key, body)
    if set(body) == {"ts_ms"} and isinstance(decoded_key, dict) and "serverName" in decoded_key:
        return Heartbeat(ts_ms=_int(body["ts_ms"], "ts_ms"))
    raise DecodeError("unknown_record", "neither a change, a transaction marker nor a heartbeat")

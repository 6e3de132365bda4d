"""Shared by the unit tests of the cdc pure cores: the real Debezium captures, and builders of
Debezium-shaped JSON (converters with schemas disabled) that go through the real decoder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc.decode import decode
from cdc.model import Record, Row, RowChange

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
STACK_CAPTURE = FIXTURES / "stack-capture.jsonl"
SAMPLES = FIXTURES / "debezium-samples"
SAMPLE_NAMES = ("run1", "runt", "outbox1", "prec")
DEMO_RULES = ROOT / "demo" / "rules.toml"


@dataclass(frozen=True, slots=True)
class Captured:
    """One captured Kafka record: `where` is its topic (stack capture) or destination (samples)."""

    name: str
    where: str
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def body(self) -> Any:
        return None if self.value is None else json.loads(self.value)


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def stack_capture() -> list[Captured]:
    rows = [json.loads(line) for line in STACK_CAPTURE.read_text().splitlines() if line.strip()]
    return [Captured(f"stack-capture@{r['offset']}", r["topic"], r["offset"], _bytes(r["key"]), _bytes(r["value"]))
            for r in rows]


def sample(name: str) -> list[Captured]:
    rows = [json.loads(line) for line in (SAMPLES / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    return [Captured(f"{name}:{i}", r["destination"], i, _bytes(r["key"]), _bytes(r["value"]))
            for i, r in enumerate(rows)]


def all_captured() -> list[Captured]:
    return [*stack_capture(), *(c for name in SAMPLE_NAMES for c in sample(name))]


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def source(table: str, lsn: int, schema: str = "public", ts_ms: int = 1_795_802_848_567) -> dict[str, Any]:
    return {"version": "3.6.1.Final", "connector": "postgresql", "name": "app", "ts_ms": ts_ms,
            "snapshot": "false", "db": "app", "schema": schema, "table": table, "txId": 1, "lsn": lsn,
            "xmin": None}


def change_value(table: str, op: str, *, before: Row | None = None, after: Row | None = None,
                 tx: str | None = None, lsn: int = 100, schema: str = "public") -> dict[str, Any]:
    return {
        "before": before,
        "after": after,
        "source": source(table, lsn, schema),
        "transaction": None if tx is None else {"id": tx, "total_order": 1, "data_collection_order": 1},
        "op": op,
        "ts_ms": 1_795_802_848_600,
    }


def change(table: str, op: str, *, before: Row | None = None, after: Row | None = None, key: Row | None = None,
           tx: str | None = None, lsn: int = 100, schema: str = "public") -> RowChange:
    """A RowChange decoded from the JSON Debezium would send for it."""
    record = decode(None if key is None else enc(key),
                    enc(change_value(table, op, before=before, after=after, tx=tx, lsn=lsn, schema=schema)))
    assert isinstance(record, RowChange)
    return record


def begin_json(xid: str, lsn: int) -> tuple[bytes, bytes]:
    tx = f"{xid}:{lsn}"
    return enc({"id": tx}), enc({"status": "BEGIN", "id": tx, "event_count": None, "data_collections": None,
                                 "ts_ms": 1_795_802_848_567})


def end_json(xid: str, lsn: int, event_count: int, ts_ms: int = 1_795_802_848_567) -> tuple[bytes, bytes]:
    tx = f"{xid}:{lsn}"
    return enc({"id": tx}), enc({"status": "END", "id": tx, "event_count": event_count, "data_collections": [],
                                 "ts_ms": ts_ms})


def heartbeat_json(ts_ms: int) -> tuple[bytes, bytes]:
    return enc({"serverName": "app"}), enc({"ts_ms": ts_ms})


def decode_all(records: list[tuple[bytes | None, bytes | None]]) -> list[Record]:
    return [decode(k, v) for k, v in records]

"""What flows through the consumer: decoded Debezium records in, invalidation batches out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Op = Literal["c", "u", "d", "r", "t", "m"]
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ts_ms: int


@dataclass(frozen=True, slots=True)
class TxBegin:
    tx_id: str


@dataclass(frozen=True, slots=True)
class TxEnd:
    tx_id: str
    end_lsn: int
    ts_ms: int
    event_count: int
    # Events per data collection ("schema.table", or Debezium's name for logical messages), as the
    # connector emitted them: the consumer checks that every one of them reached it.
    collections: tuple[tuple[str, int], ...] = ()


class RowChange(NamedTuple):
    """One row change. A NamedTuple, not a frozen dataclass: as immutable and as typed, and built several
    times faster (a frozen dataclass sets each field through object.__setattr__): every change of the
    stream is built once, replays included (bench/replay_cpu.py)."""

    schema: str
    table: str
    op: Op
    before: Row | None
    after: Row | None
    key: Row | None
    tx_id: str | None
    lsn: int
    ts_ms: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Debezium's delete marker for log compaction: it carries no change of its own."""


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """pg_logical_emit_message() output (op "m"). Transactional ones belong to their transaction:
    a write token writes one so that its transaction always reaches the stream."""

    tx_id: str | None
    prefix: str


# Why a row key of a payload rule went without data (counted in freshwire_cdc_payload_dropped_total):
# a payload column Debezium did not send; the row moved away from the key (an update changed a column
# of its key: the old key gets none); the key's data past max_payload_bytes; the transaction's past
# max_tx_payload_bytes; the transaction degraded to prefixes; events of it missing (or a flush), so the
# last change of a key may not be the one seen; another change in the transaction invalidated the key
# without data.
PAYLOAD_DROPS = ("unavailable", "moved", "too_large", "tx_too_large", "degraded", "missing", "mixed")

# Batch ids of records released without a transaction (snapshot rows) start with this.
NO_TRANSACTION = "lsn:"

Record = Heartbeat | TxBegin | TxEnd | RowChange | LogicalMessage | Tombstone


@dataclass(frozen=True, slots=True)
class Batch:
    """The invalidations of one committed transaction, released together at one version."""

    version: str
    tx_id: str
    commit_ts_ms: int
    keys: tuple[str, ...]
    prefixes: tuple[str, ...] = ()
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    # (Kafka timestamp of the record that completed it, consumer receipt), epoch ms: per-hop latency.
    arrival_ms: tuple[float, float] = (0.0, 0.0)
    # Too many keys to carry one by one: keys were replaced by prefixes (cdc/keyset.py).
    degraded: bool = False
    # Tables whose END counted more events than reached the consumer (dropped or dead-lettered):
    # invalidated as a truncate would. (table, events missing)
    missing: tuple[tuple[str, int], ...] = ()
    # A guarantee that lapsed for this batch's keys, told to their subscribers (docs/protocol.md `lapse`):
    # "replica_lag" (released past max_hold before every replica had it), "flush" (every key invalidated
    # after lost invalidations: retention overrun, or a version store found emptied). "" when none.
    lapse: str = ""
    # Payload: row key -> the rule's payload columns at this version, as compact JSON ("null": deleted).
    # Keys not in it carry no data (docs/cdc.md "Payload").
    data: dict[str, str] = field(default_factory=dict)
    # Row keys of payload rules released without data, by reason (PAYLOAD_DROPS).
    data_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.keys and not self.prefixes

    @property
    def token_tx_id(self) -> str:
        """The transaction id a write token can name; "" for a record without a transaction (a
        snapshot row, whose batch id is "lsn:<position>")."""
        return "" if self.tx_id.startswith(NO_TRANSACTION) else self.tx_id

"""Group row changes into committed transactions and release each as one batch at its commit version.

Pure and single-threaded: records go in in stream order (one partition, one total commit order),
batches come out in commit order with strictly increasing versions.

Why the END marker: a change's own `source.lsn` is not commit-ordered across concurrent
transactions; the END event's LSN is the commit record's end position, which is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

from cdc.keyset import KeyLimits, KeySet
from cdc.model import NO_TRANSACTION, Batch, Heartbeat, LogicalMessage, Record, RowChange, Tombstone, TxBegin, TxEnd
from cdc.rules import Invalidation, Rules
from contract.versions import version_of_lsn


@dataclass
class _OpenTx:
    tx_id: str
    first_offset: int
    keys: KeySet
    ops: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    events: dict[str, int] = field(default_factory=dict)  # per data collection, to check against END
    data: dict[str, str] = field(default_factory=dict)  # row key -> its newest payload in this transaction
    no_data: dict[str, str] = field(default_factory=dict)  # row key of a payload rule -> why it has none
    plain: set[str] = field(default_factory=set)  # keys some change invalidated without a payload rule

    def add(self, change: RowChange, inv: Invalidation) -> None:
        self.keys.add(change.qualified, inv.keys, inv.prefixes)
        self.ops[change.qualified][change.op] += 1
        self.events[change.qualified] = self.events.get(change.qualified, 0) + 1
        if self.keys.degraded:
            return  # no payload at all (the batch is released as prefixes)
        self.payload(inv)

    def payload(self, inv: Invalidation) -> None:
        """A key's data is the newest its row gave in this transaction, as long as every change that
        invalidated the key gave one: a key also invalidated without data (another table's template
        renders it) goes without, so the client refetches it."""
        carried = dict(inv.data) if inv.data else {}
        without = dict(inv.without) if inv.without else {}
        for key in inv.keys:
            if key in carried or key in without:
                if key in self.plain:
                    self.no_data[key] = "mixed"
                elif key in carried:
                    self.data[key] = carried[key]
                    self.no_data.pop(key, None)
                else:
                    self.data.pop(key, None)
                    self.no_data[key] = without[key]
                continue
            self.plain.add(key)
            if key in self.data or key in self.no_data:
                self.data.pop(key, None)
                self.no_data[key] = "mixed"

    def released_data(self, limits: KeyLimits, dropped_all: str) -> tuple[dict[str, str], dict[str, int]]:
        """The data released with this transaction's keys, within the limits, and what went without
        (by reason). `dropped_all` names why nothing goes (degraded, missing), or is empty."""
        dropped: dict[str, int] = {}
        for reason in self.no_data.values():
            dropped[reason] = dropped.get(reason, 0) + 1
        if dropped_all:
            if self.data:
                dropped[dropped_all] = dropped.get(dropped_all, 0) + len(self.data)
            return {}, dropped
        data: dict[str, str] = {}
        budget = limits.max_tx_payload_bytes
        for key, text in self.data.items():
            size = len(text.encode())
            reason = ("too_large" if size > limits.max_payload_bytes else
                      "tx_too_large" if size > budget else "")
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            budget -= size
            data[key] = text
        return data, dropped


# Debezium counts a transaction's logical messages under a Java object's name, not a table's.
NOT_A_TABLE = "io.debezium."


class Assembler:
    """Feed records with their offsets; collect released batches.

    `safe_offset` is the offset to commit ("next to read") such that a restart from it re-reads
    every transaction not yet released, from its BEGIN.
    """

    def __init__(self, rules: Rules, last_version: str = "", limits: KeyLimits | None = None) -> None:
        self._rules = rules
        self._limits = limits or KeyLimits()
        self._open: _OpenTx | None = None
        self.last_version = last_version
        self.safe_offset: int | None = None
        self.skipped_replays = 0
        self.flush_next = False  # the next released batch also invalidates every key (prefix "")
        self.without_transaction = 0  # changes other than snapshot reads that came without transaction metadata

    def reset(self, last_version: str = "") -> None:
        """Forget any transaction in hand (after a rebalance the stream restarts at a committed offset)."""
        self._open = None
        self.last_version = last_version
        self.safe_offset = None

    def _new_tx(self, tx_id: str, offset: int) -> _OpenTx:
        return _OpenTx(tx_id, offset, KeySet(self._limits, self._rules.parent))

    def _begin(self, tx_id: str, offset: int) -> _OpenTx:
        """Open `tx_id`. A transaction still open here lost its END (Connect dropped it): its keys and
        changes ride along with this one, released at this later commit, never dropped."""
        tx = self._new_tx(tx_id, offset)
        lost = self._open
        if lost is not None and lost.tx_id != tx_id:
            tx.first_offset = lost.first_offset
            tx.keys.add_all(lost.keys)
            for table, ops in lost.ops.items():
                for op, n in ops.items():
                    tx.ops[table][op] += n
            # The lost transaction's END never came: its events cannot be checked, so its keys go without data.
            for key in lost.data:
                lost.no_data[key] = "missing"
            tx.no_data.update(lost.no_data)
            tx.plain.update(lost.plain, lost.no_data)
        self._open = tx
        return tx

    def skip(self, offset: int) -> None:
        """A record that was dead-lettered: past it once no transaction is in hand. (Inside a
        transaction, END's event count finds it missing and its table is invalidated whole.)"""
        if self._open is None:
            self.safe_offset = offset + 1

    def feed(self, record: Record, offset: int) -> Batch | None:
        if isinstance(record, TxBegin):
            self._begin(record.tx_id, offset)
            return None
        if isinstance(record, RowChange):
            return self._change(record, offset)
        if isinstance(record, TxEnd):
            return self._end(record, offset)
        if isinstance(record, LogicalMessage) and record.tx_id is not None:
            if self._open is None or self._open.tx_id != record.tx_id:
                self._begin(record.tx_id, offset)
            return None
        if isinstance(record, (Heartbeat, Tombstone, LogicalMessage)) and self._open is None:
            self.safe_offset = offset + 1
        return None

    def _change(self, change: RowChange, offset: int) -> Batch | None:
        if change.tx_id is None:
            # Snapshot reads carry no transaction: each is its own batch at its own position (they all
            # share the snapshot's). Any other change without one means the connector runs without
            # provide.transaction.metadata, which Freshwire does not support: change positions are not
            # in commit order, so versions could go wrong. It is counted (the consumer reports it as a
            # configuration error) and released as well as it can be.
            if change.op != "r":
                self.without_transaction += 1
            single = self._new_tx(f"{NO_TRANSACTION}{change.lsn}", offset)
            single.add(change, self._rules.for_change(change))
            return self._release(single, change.lsn, change.ts_ms, offset, same_version_ok=True)
        open_tx = self._open
        if open_tx is None or open_tx.tx_id != change.tx_id:
            open_tx = self._begin(change.tx_id, offset)  # a change whose BEGIN we did not see
        open_tx.add(change, self._rules.for_change(change, open_tx.keys.depth))
        return None

    def _end(self, end: TxEnd, offset: int) -> Batch | None:
        tx = self._open if self._open is not None and self._open.tx_id == end.tx_id else self._new_tx(end.tx_id, offset)
        self._open = None
        seen = tx.events
        missing = tuple((table, expected - seen.get(table, 0)) for table, expected in end.collections
                        if expected > seen.get(table, 0) and not table.startswith(NOT_A_TABLE))
        for table, _n in missing:
            inv = self._rules.for_missing(table)
            tx.keys.add(table, inv.keys, inv.prefixes)
        return self._release(tx, end.end_lsn, end.ts_ms, offset, missing=missing)

    def _release(self, tx: _OpenTx, lsn: int, ts_ms: int, offset: int, same_version_ok: bool = False,
                 missing: tuple[tuple[str, int], ...] = ()) -> Batch | None:
        if self._open is None:
            self.safe_offset = offset + 1
        version = version_of_lsn(lsn)
        # Snapshot reads share one position; a key still advances only once per version in Redis.
        if version < self.last_version or (version == self.last_version and not same_version_ok):
            self.skipped_replays += 1
            return None
        self.last_version = version
        lapse = ""
        if self.flush_next:
            tx.keys.prefixes[""] = ""
            self.flush_next = False
            lapse = "flush"
        # A degraded batch names no keys; with events missing (or lost before a flush) the last change of
        # a key may not be the one seen here.
        drop_all = "degraded" if tx.keys.degraded else "missing" if missing or lapse else ""
        data, dropped = tx.released_data(self._limits, drop_all)
        return Batch(
            version=version,
            tx_id=tx.tx_id,
            commit_ts_ms=ts_ms,
            keys=tuple(tx.keys.keys),
            prefixes=tuple(tx.keys.prefixes),
            ops={table: dict(ops) for table, ops in tx.ops.items()},
            degraded=tx.keys.degraded,
            missing=missing,
            lapse=lapse,
            data=data,
            data_dropped=dropped,
        )


def whole_tables(batch: Batch, rules: Rules) -> Batch:
    """The same transaction as a few prefixes: every table it changed invalidated as a truncate would.
    For a release Redis refuses as it is; covers everything `batch` covers."""
    keys: dict[str, None] = {}
    prefixes: dict[str, None] = {}
    for table in batch.ops:
        inv = rules.for_missing(table)
        keys.update(dict.fromkeys(inv.keys))
        prefixes.update(dict.fromkeys(inv.prefixes))
    if "" in batch.prefixes:
        prefixes[""] = None
    return replace(batch, keys=tuple(keys), prefixes=tuple(prefixes), degraded=True, data={})

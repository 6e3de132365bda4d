"""Group row changes into committed transactions and release each as one batch at its commit version.

Pure and single-threaded: records go in in stream order (one partition, one total commit order),
batches come out in commit order with strictly increasing versions.

Why the END marker: a change's own `source.lsn` is not commit-ordered across concurrent
transactions; the END event's LSN is the commit record's end position, which is.

Why changes wait for END before the rules see them: only END tells whether the transaction was
released before (a replay skips it), and on a replay nearly every transaction was. A transaction's
changes are kept as they came (at most MAX_DEFERRED of them) and go through the rules, in the same
order, once END says the transaction is released: the batch is the one applying them one by one gives.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

from cdc.keyset import KeyLimits, KeySet
from cdc.model import NO_TRANSACTION, Batch, Heartbeat, LogicalMessage, Record, RowChange, Tombstone, TxBegin, TxEnd
from cdc.rules import Invalidation, Rules
from contract.versions import version_of_lsn

# Changes of one transaction kept unapplied until its END (see above); past this many, the rest are
# applied as they come, so a transaction of a million rows holds its bounded key set, not its rows.
MAX_DEFERRED = 1000


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
    deferred: list[RowChange] = field(default_factory=list)  # counted, not yet through the rules

    def count(self, change: RowChange) -> None:
        """One more event of `change`'s table, to check against END (its op is counted by `add`)."""
        table = change.qualified
        self.events[table] = self.events.get(table, 0) + 1

    def add(self, change: RowChange, inv: Invalidation) -> None:
        """`change` (already counted) invalidates `inv`."""
        table = change.qualified
        self.ops[table][change.op] += 1
        self.keys.add(table, inv.keys, inv.prefixes)
        if self.keys.degraded:
            return  # no payload at all (the batch is released as prefixes)
        self.payload(inv)

    def apply_deferred(self, rules: Rules) -> None:
        """Put the deferred changes through the rules, in stream order (each at the depth the key set
        has reached when its turn comes, as if it had been applied on arrival)."""
        changes, self.deferred = self.deferred, []
        for change in changes:
            self.add(change, rules.for_change(change, self.keys.depth))

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
            lost.apply_deferred(self._rules)
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
        if isinstance(record, RowChange):
            return self._change(record, offset)
        if isinstance(record, TxBegin):
            self._begin(record.tx_id, offset)
            return None
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
            if self._released_before(change.lsn, offset, same_version_ok=True):
                return None
            single = self._new_tx(f"{NO_TRANSACTION}{change.lsn}", offset)
            single.count(change)
            single.add(change, self._rules.for_change(change))
            return self._release(single, change.lsn, change.ts_ms, offset)
        open_tx = self._open
        if open_tx is None or open_tx.tx_id != change.tx_id:
            open_tx = self._begin(change.tx_id, offset)  # a change whose BEGIN we did not see
        open_tx.count(change)
        open_tx.deferred.append(change)
        if len(open_tx.deferred) > MAX_DEFERRED:
            open_tx.apply_deferred(self._rules)
        return None

    def _end(self, end: TxEnd, offset: int) -> Batch | None:
        tx = self._open if self._open is not None and self._open.tx_id == end.tx_id else self._new_tx(end.tx_id, offset)
        self._open = None
        seen = tx.events
        missing = tuple((table, expected - seen.get(table, 0)) for table, expected in end.collections
                        if expected > seen.get(table, 0) and not table.startswith(NOT_A_TABLE))
        if self._released_before(end.end_lsn, offset):
            return None
        tx.apply_deferred(self._rules)
        for table, _n in missing:
            inv = self._rules.for_missing(table)
            tx.keys.add(table, inv.keys, inv.prefixes)
        return self._release(tx, end.end_lsn, end.ts_ms, offset, missing=missing)

    def _released_before(self, lsn: int, offset: int, same_version_ok: bool = False) -> bool:
        """Whether the batch committed at `lsn`, ending at `offset`, was released before: then it is
        skipped (counted in `skipped_replays`), and its offset passed once no transaction is in hand."""
        version = version_of_lsn(lsn)
        # Snapshot reads share one position; a key still advances only once per version in Redis.
        if version < self.last_version or (version == self.last_version and not same_version_ok):
            if self._open is None:
                self.safe_offset = offset + 1
            self.skipped_replays += 1
            return True
        return False

    def _release(self, tx: _OpenTx, lsn: int, ts_ms: int, offset: int,
                 missing: tuple[tuple[str, int], ...] = ()) -> Batch:
        """`tx` as the batch at `lsn`'s version (one `_released_before` found not released yet)."""
        if self._open is None:
            self.safe_offset = offset + 1
        version = version_of_lsn(lsn)
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

"""Group row changes into committed transactions and release each as one batch at its commit version.

Pure and single-threaded: records go in in stream order (one partition, one total commit order),
batches come out in commit order with strictly increasing versions.

Why the END marker: a change's own `source.lsn` is not commit-ordered across concurrent
transactions; the END event's LSN is the commit record's end position, which is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cdc.model import Batch, Heartbeat, LogicalMessage, Record, RowChange, Tombstone, TxBegin, TxEnd
from cdc.rules import Invalidation, Rules
from cdc.versions import version_of_lsn


@dataclass
class _OpenTx:
    tx_id: str
    first_offset: int
    keys: dict[str, None] = field(default_factory=dict)
    prefixes: dict[str, None] = field(default_factory=dict)
    ops: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    def add(self, change: RowChange, inv: Invalidation) -> None:
        self.keys.update(dict.fromkeys(inv.keys))
        self.prefixes.update(dict.fromkeys(inv.prefixes))
        self.ops[change.qualified][change.op] += 1


class Assembler:
    """Feed records with their offsets; collect released batches.

    `safe_offset` is the offset to commit ("next to read") such that a restart from it re-reads
    every transaction not yet released, from its BEGIN.
    """

    def __init__(self, rules: Rules, last_version: str = "") -> None:
        self._rules = rules
        self._open: _OpenTx | None = None
        self.last_version = last_version
        self.safe_offset: int | None = None
        self.skipped_replays = 0
        self.flush_next = False  # the next released batch also invalidates every key (prefix "")

    def reset(self, last_version: str = "") -> None:
        """Forget any transaction in hand (after a rebalance the stream restarts at a committed offset)."""
        self._open = None
        self.last_version = last_version
        self.safe_offset = None

    def skip(self, offset: int) -> None:
        """A record that was dead-lettered: past it once no transaction is in hand."""
        if self._open is None:
            self.safe_offset = offset + 1

    def feed(self, record: Record, offset: int) -> Batch | None:
        if isinstance(record, TxBegin):
            self._open = _OpenTx(record.tx_id, offset)
            return None
        if isinstance(record, RowChange):
            return self._change(record, offset)
        if isinstance(record, TxEnd):
            return self._end(record, offset)
        if isinstance(record, LogicalMessage) and record.tx_id is not None:
            if self._open is None or self._open.tx_id != record.tx_id:
                self._open = _OpenTx(record.tx_id, offset)
            return None
        if isinstance(record, (Heartbeat, Tombstone, LogicalMessage)) and self._open is None:
            self.safe_offset = offset + 1
        return None

    def _change(self, change: RowChange, offset: int) -> Batch | None:
        inv = self._rules.for_change(change)
        if change.tx_id is None:
            # No transaction metadata (snapshot reads, or the connector runs without it): the record
            # is its own batch, versioned by its own position.
            tx = _OpenTx(f"lsn:{change.lsn}", offset)
            tx.add(change, inv)
            return self._release(tx, change.lsn, change.ts_ms, offset, same_version_ok=True)
        if self._open is None or self._open.tx_id != change.tx_id:
            # A change whose BEGIN we did not see: start the transaction here.
            self._open = _OpenTx(change.tx_id, offset)
        self._open.add(change, inv)
        return None

    def _end(self, end: TxEnd, offset: int) -> Batch | None:
        tx = self._open if self._open is not None and self._open.tx_id == end.tx_id else _OpenTx(end.tx_id, offset)
        self._open = None
        return self._release(tx, end.end_lsn, end.ts_ms, offset)

    def _release(self, tx: _OpenTx, lsn: int, ts_ms: int, offset: int, same_version_ok: bool = False) -> Batch | None:
        if self._open is None:
            self.safe_offset = offset + 1
        version = version_of_lsn(lsn)
        # Snapshot reads share one position; a key still advances only once per version in Redis.
        if version < self.last_version or (version == self.last_version and not same_version_ok):
            self.skipped_replays += 1
            return None
        self.last_version = version
        if self.flush_next:
            tx.prefixes[""] = None
            self.flush_next = False
        return Batch(
            version=version,
            tx_id=tx.tx_id,
            commit_ts_ms=ts_ms,
            keys=tuple(tx.keys),
            prefixes=tuple(tx.prefixes),
            ops={table: dict(ops) for table, ops in tx.ops.items()},
        )

"""Watch Debezium's replication slot on the primary: how much WAL it holds back and whether
PostgreSQL is about to give up on it (`max_slot_wal_keep_size`). Read-only, one query per interval."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from cdc.metrics import Metrics

log = logging.getLogger(__name__)

SLOT_SQL = """
SELECT active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes,
       wal_status,
       safe_wal_size
FROM pg_replication_slots WHERE slot_name = %s
"""


class SlotMonitor:
    def __init__(self, dsn: str, slot: str, metrics: Metrics) -> None:
        self.dsn, self.slot, self.metrics = dsn, slot, metrics
        self._conn: psycopg.Connection[Any] | None = None

    def poll(self) -> dict[str, Any]:
        """The slot's state (also exported as metrics); {"error": ...} when it cannot be read."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
            row = self._conn.execute(SLOT_SQL, (self.slot,)).fetchone()
        except psycopg.Error as exc:
            self._conn = None
            return {"slot": self.slot, "error": str(exc).strip()[:200]}
        if row is None:
            return {"slot": self.slot, "error": "no such replication slot"}
        active, retained, lag, wal_status, safe = row
        m = self.metrics
        m.slot_active.set(1 if active else 0)
        m.slot_retained.set(retained or 0)
        m.slot_lag.set(lag or 0)
        if safe is not None:
            m.slot_safe.set(safe)
        m.slot_lost.set(1 if wal_status == "lost" else 0)
        return {"slot": self.slot, "active": bool(active), "retained_wal_bytes": retained,
                "confirmed_lag_bytes": lag, "wal_status": wal_status, "safe_wal_bytes": safe}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

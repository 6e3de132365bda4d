"""Replica-aware release: a transaction's batch is released only once every configured replica has
replayed past its commit (`pg_last_wal_replay_lsn() >= the commit's end LSN`, which is the version).

Why the commit's *end*: a standby can have replayed every change of a transaction and still not
show it until it replays the commit record itself; `recovery_min_apply_delay` delays exactly those.

The pure part decides; ReplicaWatcher is the I/O shell (one cheap query per replica per poll).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg

from cdc.metrics import Metrics
from cdc.model import Batch
from contract.versions import lsn_of_text, lsn_of_version

log = logging.getLogger(__name__)

HoldPolicy = Literal["release", "hold"]
REPLAY_SQL = ("SELECT pg_last_wal_replay_lsn()::text, "
              "COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8")


def releasable(batches: Sequence[Batch], replayed_lsn: int) -> int:
    """How many batches, from the head and in commit order, every replica has replayed."""
    n = 0
    for batch in batches:
        if lsn_of_version(batch.version) > replayed_lsn:
            break
        n += 1
    return n


@dataclass(frozen=True)
class HoldDecision:
    release: int        # batches to release now
    stale: bool         # released past max_hold without the replicas having them


def decide(batches: Sequence[Batch], replayed_lsn: int, held_s: float, max_hold_s: float,
           policy: HoldPolicy) -> HoldDecision:
    n = releasable(batches, replayed_lsn)
    if n == 0 and batches and held_s >= max_hold_s and policy == "release":
        return HoldDecision(1, True)
    return HoldDecision(n, False)


class ReplicaWatcher:
    """Reads each replica's replay position; a replica that does not answer counts as position 0."""

    def __init__(self, dsns: Sequence[str], metrics: Metrics) -> None:
        self.dsns = list(dsns)
        self.metrics = metrics
        self._conns: dict[str, psycopg.Connection[tuple[object, ...]]] = {}

    def _replayed(self, dsn: str) -> int:
        try:
            conn = self._conns.get(dsn)
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2)
                self._conns[dsn] = conn
            row = conn.execute(REPLAY_SQL).fetchone()
        except psycopg.Error as exc:
            log.warning("replica %s unreachable: %s", _host(dsn), exc)
            self._conns.pop(dsn, None)
            return 0
        if row is None or row[0] is None:
            return 0  # not a standby, or nothing replayed yet
        lsn = lsn_of_text(str(row[0]))
        self.metrics.replica_lag.labels(_host(dsn)).set(float(row[1] or 0))  # type: ignore[arg-type]
        self.metrics.replica_replayed.labels(_host(dsn)).set(lsn)
        return lsn

    def replayed(self) -> int:
        """The position every replica has replayed (the least of them)."""
        return min(self._replayed(dsn) for dsn in self.dsns)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()


def _host(dsn: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"{info.get('host', '')}:{info.get('port', '')}"

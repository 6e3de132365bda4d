"""bench/replay_cpu.py's workload: real-shaped Debezium records the consumer decodes and releases whole."""

from __future__ import annotations

from bench.replay_cpu import one_pass, workload
from cdc.decode import decode
from cdc.model import Heartbeat, RowChange, TxBegin, TxEnd


def test_bench_replay_cpu_workload_is_transactions_of_card_updates_with_heartbeats() -> None:
    msgs, last_version = workload(transactions=4, rows_per_tx=3, heartbeat_every=2)
    records = [decode(m.key(), m.value()) for m in msgs]
    assert [m.offset() for m in msgs] == list(range(len(msgs)))
    assert sum(isinstance(r, Heartbeat) for r in records) == 2
    ends = [r for r in records if isinstance(r, TxEnd)]
    assert len(ends) == sum(isinstance(r, TxBegin) for r in records) == 4 + 2
    assert [r.end_lsn for r in ends] == sorted(r.end_lsn for r in ends)
    assert last_version == f"{ends[-1].end_lsn:016x}"
    cards = [r for r in records if isinstance(r, RowChange) and r.table == "cards"]
    assert len(cards) == 12 and all(r.op == "u" and r.before and r.after for r in cards)
    assert all(r.after["version"] == r.before["version"] + 1 for r in cards if r.after and r.before)


def test_bench_replay_cpu_replay_releases_nothing_and_live_everything() -> None:
    msgs, last_version = workload(transactions=6, rows_per_tx=2, heartbeat_every=3)
    assert one_pass(msgs, last_version, chunk=5, seconds=30)[3] == 0
    records, _wall, _cpu, released = one_pass(msgs, "", chunk=5, seconds=30)
    assert records == len(msgs) and released == 6 + 2

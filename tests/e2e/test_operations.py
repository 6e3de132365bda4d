"""Operational guards on the real stack: the replication slot is visible, and a consumer that was
down past the input topic's retention flushes every key instead of silently losing invalidations."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from connectors import procs, services
from connectors.stack_settings import StackSettings
from tests.e2e.helpers import client, new_board, new_card, subscribe_settled, until, write


def _readyz(s: StackSettings) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://{s.host}:{s.cdc_metrics_port}/readyz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


async def test_operations_slot_state_in_readyz_and_metrics(stack_settings: StackSettings) -> None:
    s = stack_settings

    def slot_seen() -> bool:
        status, body = _readyz(s)
        slot = body.get("slot_state")
        return status == 200 and isinstance(slot, dict) and slot.get("wal_status") in ("reserved", "extended")

    await until(slot_seen, timeout_s=15, what="slot state in /readyz")
    _status, body = _readyz(s)
    slot = body["slot_state"]
    assert isinstance(slot, dict) and slot["active"] is True and slot["slot"] == "freshwire"
    assert isinstance(slot["safe_wal_bytes"], int) and slot["safe_wal_bytes"] > 0  # max_slot_wal_keep_size is set
    with urllib.request.urlopen(f"http://{s.host}:{s.cdc_metrics_port}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    for name in ("freshwire_slot_retained_wal_bytes", "freshwire_slot_confirmed_lag_bytes",
                 "freshwire_slot_safe_wal_bytes", "freshwire_slot_lost 0.0"):
        assert name in metrics


async def test_operations_consumer_down_past_retention_flushes_every_key(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    lost_card, bystander = new_card(s, board), new_card(s, board)
    async with client(s, ["card:*"]) as c:
        await subscribe_settled(c, [f"card:{lost_card}", f"card:{bystander}"])
        procs.stop("cdc", s.pids_dir)
        write(s, "UPDATE cards SET version = version + 1 WHERE id = %s", (lost_card,))
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
        consumer_tp = TopicPartition("freshwire.cdc", 0, -1)  # -1: up to the high watermark
        await asyncio.sleep(1.0)  # let Debezium deliver the change before it "expires"
        for future in admin.delete_records([consumer_tp]).values():
            future.result(timeout=30)
        proc = services.cdc_proc(s)
        procs.start(proc, s.pids_dir)
        procs.wait_ready(proc)
        # the change itself expired unread, yet both keys are invalidated: nobody keeps stale data
        await until(lambda: {f"card:{lost_card}", f"card:{bystander}"} <= {k for k, _v in c.received},
                    timeout_s=20, what="a flush of every key")


def test_the_replica_streams_through_its_slot_and_an_unused_slot_is_dropped(stack_settings: StackSettings) -> None:
    import psycopg

    s = stack_settings
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                           (services.REPLICA_SLOT,)).fetchone()
        assert row is not None and row[0], "the replica streams through its physical slot"
        services.drop_replica_slot(s)  # a streaming replica's slot stays
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                            (services.REPLICA_SLOT,)).fetchone() == (1,)
        # An unused one (as left by a stack now started without its replica) holds back vacuum: dropped.
        conn.execute("SELECT pg_create_physical_replication_slot('freshwire_test_unused', true)")
        services.drop_replica_slot(s, "freshwire_test_unused")
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'freshwire_test_unused'"
                            ).fetchone() == (0,)

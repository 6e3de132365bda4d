"""End to end through the real stack: a WAL change -> Debezium -> Kafka -> cdc -> Redis -> gateway -> client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from connectors.stack_settings import StackSettings
from contract.versions import lsn_of_text, version_of_lsn
from tests.e2e.helpers import (
    CardWriter,
    assert_in_order_once,
    client,
    connect,
    new_board,
    new_card,
    next_id,
    subscribe_settled,
    until,
    write,
)


async def test_e2e_update_reaches_subscriber_with_commit_version(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    card = new_card(s, board)
    async with client(s, ["card:*", "board:*"]) as c:
        await subscribe_settled(c, [f"card:{card}", f"board:{board}"])
        _txid, inside, after = write(s, "UPDATE cards SET status = 'done' WHERE id = %s", (card,))
        batch = await c.next_batch(20)
        assert set(batch) == {f"card:{card}", f"board:{board}"}
        version = batch[f"card:{card}"]
        assert batch[f"board:{board}"] == version  # one transaction, one version
        assert inside < version <= after           # the commit's end position, from the WAL itself
        assert_in_order_once(c.received)


async def test_e2e_insert_and_delete_invalidate(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    async with client(s, ["board:*", "card:*"]) as c:
        await subscribe_settled(c, [f"board:{board}"])
        card = new_card(s, board)
        first = await c.next_batch(20)
        write(s, "DELETE FROM cards WHERE id = %s", (card,))
        second = await c.next_batch(20)
        assert first[f"board:{board}"] < second[f"board:{board}"]


async def test_e2e_concurrent_transactions_end_at_later_commit(stack_settings: StackSettings) -> None:
    """(a) T1 writes first but commits last: the key ends at T1's version and never goes backwards."""
    s = stack_settings
    board = new_board(s)
    a, b = new_card(s, board), new_card(s, board)
    async with client(s, ["board:*"]) as c:
        await subscribe_settled(c, [f"board:{board}"])
        with connect(s) as t1, connect(s) as t2:
            t1.execute("UPDATE cards SET title = 't1' WHERE id = %s", (a,))
            t2.execute("UPDATE cards SET title = 't2' WHERE id = %s", (b,))
            t2.commit()
            after_t2 = t2.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            t1.commit()
            after_t1 = t1.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        assert after_t1 is not None and after_t2 is not None
        low, high = (version_of_lsn(lsn_of_text(str(r[0]))) for r in (after_t2, after_t1))
        key = f"board:{board}"
        # T1 committed after T2, so its commit ends past T2's: the key must end in (low, high].
        await until(lambda: low < (c.versions.get(key) or "") <= high, what="T1's version")
        await asyncio.sleep(0.3)
        assert_in_order_once(c.received)  # the earlier commit never arrives after the later one
        assert low < c.received[-1][1] <= high


async def test_e2e_row_moved_between_parents_invalidates_both(stack_settings: StackSettings) -> None:
    """(b) A card moving from one board to another invalidates both boards at one version."""
    s = stack_settings
    src, dst = new_board(s), new_board(s)
    card = new_card(s, src)
    async with client(s, ["board:*"]) as c:
        await subscribe_settled(c, [f"board:{src}", f"board:{dst}"])
        write(s, "UPDATE cards SET board_id = %s WHERE id = %s", (dst, card))
        batch = await c.next_batch(20)
        assert set(batch) == {f"board:{src}", f"board:{dst}"}
        assert batch[f"board:{src}"] == batch[f"board:{dst}"]


async def test_e2e_fifty_row_transaction_is_one_batch(stack_settings: StackSettings) -> None:
    """(c) 50 rows in one transaction: one invalidate frame, every key at the same version."""
    s = stack_settings
    board = new_board(s)
    ids = [next_id(s, "cards") for _ in range(50)]
    async with client(s, ["card:*", "board:*"]) as c:
        await subscribe_settled(c, [f"board:{board}"])
        await c.subscribe([f"card:{i}" for i in ids])
        with connect(s) as conn:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO cards (id, tenant_id, board_id, title) VALUES (%s, 1, %s, 'bulk')",
                                [(i, board) for i in ids])
            conn.commit()
        batch = await c.next_batch(20)
        assert len(batch) == 51
        assert len(set(batch.values())) == 1


async def test_e2e_consumer_killed_mid_stream_loses_and_repeats_nothing(stack_settings: StackSettings) -> None:
    """(d) kill -9 of the cdc consumer while transactions commit; after a restart every key ends at the
    version of its last transaction (read from the ops topic's txIds vs the database), none twice."""
    from connectors import procs, services

    s = stack_settings
    board = new_board(s)
    cards = [new_card(s, board) for _ in range(5)]
    async with client(s, ["card:*"]) as c:
        await subscribe_settled(c, [f"card:{i}" for i in cards])
        writer = CardWriter(s, cards, limit=400)
        writer.start()
        await asyncio.sleep(0.5)
        proc = services.cdc_proc(s)
        assert procs.kill("cdc", s.pids_dir, port=proc.port)
        await asyncio.sleep(0.5)
        procs.start(proc, s.pids_dir)
        procs.wait_ready(proc)
        await asyncio.sleep(0.5)
        writer.finish()
        await until(lambda: writer.reached_by(c), timeout_s=60, what="every card at its last transaction's version")
        assert_in_order_once(c.received)
        per_key: dict[str, int] = {}
        for key, _v in c.received:
            per_key[key] = per_key.get(key, 0) + 1
        # Coalescing may merge versions, never add them: at most one delivery per transaction.
        for card in cards:
            assert per_key.get(f"card:{card}", 0) <= writer.counts[card]


def test_e2e_malformed_record_goes_to_dlq_and_pipeline_continues(stack_settings: StackSettings) -> None:
    """(e) A record the consumer cannot decode lands in the DLQ with its bytes; the next good one arrives."""
    s = stack_settings
    garbage = b"{not json at all"
    producer = Producer({"bootstrap.servers": s.kafka_bootstrap})
    producer.produce("freshwire.cdc", key=b"bad-key", value=garbage)
    producer.flush(10)
    board = new_board(s)

    async def check() -> None:
        async with client(s, ["board:*"]) as c:
            await c.subscribe([f"board:{board}"])
            new_card(s, board)
            await c.next_batch(20)

    asyncio.run(check())
    dlq = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-dlq", "enable.auto.commit": False})
    try:
        low, high = dlq.get_watermark_offsets(TopicPartition("freshwire.dlq", 0), timeout=10)
        dlq.assign([TopicPartition("freshwire.dlq", 0, low)])
        found: list[Message] = []
        while len(found) < high - low:
            msg = dlq.poll(5)
            if msg is None:
                break
            found.append(msg)
        match = [m for m in found if m.value() == garbage and m.key() == b"bad-key"]
        assert match, "malformed record not in the DLQ"
        headers = dict(match[-1].headers() or [])
        assert headers["freshwire.error.code"] == b"bad_json"
        assert headers["freshwire.source.topic"] == b"freshwire.cdc"
        offset = headers["freshwire.source.offset"]
        assert isinstance(offset, bytes) and int(offset) >= 0
    finally:
        dlq.close()


def test_e2e_ops_topic_has_one_record_per_transaction(stack_settings: StackSettings) -> None:
    """(f) A plain Kafka consumer reads one JSON record per transaction, with its txId and keys."""
    s = stack_settings
    board = new_board(s)
    txids = [write(s, "INSERT INTO cards (tenant_id, board_id, title) VALUES (1, %s, 'ops')", (board,))[0]
             for _ in range(3)]
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-ops", "enable.auto.commit": False})
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition("freshwire.invalidations", 0), timeout=10)
        consumer.assign([TopicPartition("freshwire.invalidations", 0, max(0, high - 50))])
        records: list[dict[str, Any]] = []
        deadline = __import__("time").monotonic() + 20
        while __import__("time").monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None and (value := msg.value()):
                records.append(json.loads(value))
            if all(sum(1 for r in records if r["txId"] == t) == 1 for t in txids):
                break
        for t in txids:
            mine = [r for r in records if r["txId"] == t]
            assert len(mine) == 1, f"tx {t}: {len(mine)} records"
            assert f"board:{board}" in mine[0]["keys"]
            assert mine[0]["ops"] == {"public.cards": {"c": 1}}
    finally:
        consumer.close()


@pytest.mark.parametrize("tenant_token, other", [(1, 2)])
async def test_e2e_token_for_one_tenant_never_receives_another(stack_settings: StackSettings, tenant_token: int,
                                                                other: int) -> None:
    s = stack_settings
    mine, theirs = new_board(s, tenant_token), new_board(s, other)
    async with client(s, [f"tenant:{tenant_token}:*"]) as c:
        await subscribe_settled(c, [f"tenant:{tenant_token}:board:{mine}"])
        with pytest.raises(Exception, match="forbidden"):
            await c.subscribe([f"tenant:{other}:board:{theirs}"])
        new_card(s, theirs, tenant=other)
        new_card(s, mine, tenant=tenant_token)
        await c.next_batch(20)
        await asyncio.sleep(0.3)
        assert all(k.startswith(f"tenant:{tenant_token}:") for k, _ in c.received)

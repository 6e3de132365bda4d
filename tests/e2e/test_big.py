"""Big transactions and big rows never stop the pipeline (issue #17), through the real stack.

Each test commits something large, waits until its invalidations reach a real client, then commits
one small transaction and requires it to reach the client within a second of its commit: the
pipeline is moving again, not just alive.
"""

from __future__ import annotations

import json
import time

from confluent_kafka import Consumer, TopicPartition

from connectors.stack_settings import StackSettings
from gateway.client import Client
from tests.e2e.helpers import client, new_board, new_card, next_id, subscribe_settled, until, write

ROWS = 100_000
MB = 1024 * 1024
NEXT_SMALL_S = 1.0


def _tenant(s: StackSettings) -> int:
    return 1000 + next_id(s, "boards")  # a tenant of its own, so prefix invalidations are its alone


async def _arrives(c: Client, key: str, low: str, high: str, timeout_s: float = 60.0) -> float:
    """Wait until `key` is at a version in (low, high]; returns when (monotonic)."""
    await until(lambda: low < (c.versions.get(key) or "") <= high, timeout_s, what=f"{key} in ({low}, {high}]")
    return time.monotonic()


async def _next_small_within_a_second(s: StackSettings, c: Client, card: int) -> None:
    t0 = time.monotonic()
    _tx, inside, after = write(s, "UPDATE cards SET title = title || '.' WHERE id = %s", (card,))
    arrived = await _arrives(c, f"card:{card}", inside, after, timeout_s=10)
    assert arrived - t0 <= NEXT_SMALL_S, f"the next small transaction took {arrived - t0:.2f}s"


async def test_big_update_of_100k_rows_is_invalidated_within_its_tenant(stack_settings: StackSettings) -> None:
    s = stack_settings
    tenant = _tenant(s)
    board = new_board(s, tenant)
    other_board = new_board(s, 1)
    witness = new_card(s, other_board, 1)  # another tenant's card: its tenant keys must stay quiet
    small = new_card(s, new_board(s, 1), 1)
    first = next_id(s, "cards")
    write(s, "SELECT setval('cards_id_seq', %s)", (first + ROWS,))
    async with client(s, ["*"]) as c:
        mine = [f"card:{first + 7}", f"tenant:{tenant}:card:{first + ROWS - 1}", f"tenant:{tenant}:board:{board}"]
        quiet = [f"tenant:1:card:{witness}", f"tenant:1:board:{other_board}"]
        await subscribe_settled(c, [*mine, *quiet, f"card:{small}"])
        for sql in ("INSERT INTO cards (id, tenant_id, board_id, title) "
                    "SELECT g, %s, %s, 'bulk' FROM generate_series(%s, %s) g",
                    "UPDATE cards SET version = version + 1 WHERE board_id = %s AND tenant_id = %s"):
            params = (tenant, board, first, first + ROWS - 1) if sql.startswith("INSERT") else (board, tenant)
            _tx, inside, after = write(s, sql, params)
            for key in mine:
                await _arrives(c, key, inside, after)
        await _next_small_within_a_second(s, c, small)
        assert not [k for k, _v in c.received if k in quiet], "a degraded batch crossed tenants"
        _tx, inside, after = write(s, "DELETE FROM cards WHERE board_id = %s", (board,))
        for key in mine:
            await _arrives(c, key, inside, after)


def _dlq_codes(s: StackSettings, start: int) -> list[str]:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-big-dlq",
                         "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition("freshwire.dlq", 0, start)])
        codes = []
        while (msg := consumer.poll(2.0)) is not None:
            if msg.error() is None:
                code = dict(msg.headers() or {}).get("freshwire.error.code", b"")
                assert isinstance(code, bytes), code  # a consumed header is bytes (the stubs share the produce type)
                codes.append(code.decode())
        return codes
    finally:
        consumer.close()


def _dlq_end(s: StackSettings) -> int:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-big-dlq"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition("freshwire.dlq", 0), timeout=10)[1])
    finally:
        consumer.close()


def _connector_running(s: StackSettings) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{s.connect_url}/connectors/freshwire-postgres/status", timeout=5) as r:
        status = json.load(r)
    return bool(status["connector"]["state"] == "RUNNING" and all(t["state"] == "RUNNING" for t in status["tasks"]))


async def test_big_values_of_5_mb_travel_and_larger_ones_degrade(stack_settings: StackSettings) -> None:
    """A 5 MB text the rules read, a 5 MB jsonb they do not, and a 17 MB text over every record limit:
    the first two travel (the jsonb is never captured), the third is dropped by Connect and END's event
    count finds it missing, so its table is invalidated whole (with a DLQ note); nothing stops."""
    s = stack_settings
    tenant = _tenant(s)
    board = new_board(s, 1)
    small = new_card(s, board, 1)
    doc, big = next_id(s, "documents"), next_id(s, "documents")
    keys = [f"tenant:{tenant}:doc:{doc}", f"tenant:{tenant}:docs", f"tenant:{tenant}:doc:{big}"]
    dlq_start = _dlq_end(s)
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, [*keys, f"card:{small}"])
        insert = ("INSERT INTO documents (id, tenant_id, title, body, meta) "
                  "VALUES (%s, %s, 't', repeat('b', %s), jsonb_build_object('blob', repeat('m', %s)))")
        _tx, inside, after = write(s, insert, (doc, tenant, 5 * MB, 5 * MB))
        await _arrives(c, keys[0], inside, after)
        _tx, inside, after = write(s, "UPDATE documents SET body = repeat('c', %s) WHERE id = %s", (5 * MB, doc))
        await _arrives(c, keys[0], inside, after)
        await _next_small_within_a_second(s, c, small)
        assert "missing_events" not in _dlq_codes(s, dlq_start), "a 5 MB value was dropped on the way"

        _tx, inside, after = write(s, insert, (big, tenant, 17 * MB, 0))
        for key in keys:
            await _arrives(c, key, inside, after)
        await _next_small_within_a_second(s, c, small)
    assert _connector_running(s)
    assert _dlq_codes(s, dlq_start).count("missing_events") == 1


async def test_big_transaction_touching_every_captured_table(stack_settings: StackSettings) -> None:
    s = stack_settings
    tenant = _tenant(s)
    board, doc, item = next_id(s, "boards"), next_id(s, "documents"), 2_000_000_000 - next_id(s, "boards")
    card = next_id(s, "cards")
    keys = [f"tenant:{tenant}:board:{board}", f"tenant:{tenant}:card:{card}", f"tenant:{tenant}:doc:{doc}",
            f"chaos:{tenant}:item:{item}", f"order:{tenant}"]
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, keys)
        _tx, inside, after = write(s, f"""
            INSERT INTO boards (id, tenant_id, name) VALUES ({board}, {tenant}, 'all');
            INSERT INTO cards (id, tenant_id, board_id, title) VALUES ({card}, {tenant}, {board}, 'all');
            INSERT INTO documents (id, tenant_id, title) VALUES ({doc}, {tenant}, 'all');
            INSERT INTO chaos_items (id, tenant_id, parent_id, val) VALUES ({item}, {tenant}, 1, 'all');
            INSERT INTO outbox (aggregatetype, aggregateid, type) VALUES ('order', '{tenant}', 'all');
            INSERT INTO idempotency_keys (key, response) VALUES ('all-{tenant}', '{{}}');
            UPDATE freshwire_heartbeat SET beat_at = now()""", dsn=s.pg_dsn)  # the heartbeat is Debezium's own
        for key in keys:
            await _arrives(c, key, inside, after)
        versions = {c.versions[k] for k in keys}
        assert len(versions) == 1, "one transaction, one version"


async def test_big_truncate_of_a_large_table(stack_settings: StackSettings) -> None:
    s = stack_settings
    tenant = _tenant(s)
    board = new_board(s, 1)
    small = new_card(s, board, 1)
    first = next_id(s, "documents")
    write(s, "SELECT setval('documents_id_seq', %s)", (first + ROWS,))
    keys = [f"tenant:{tenant}:doc:{first}", f"tenant:{tenant}:doc:{first + ROWS - 1}", f"tenant:{tenant}:docs"]
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, [*keys, f"card:{small}"])
        _tx, inside, after = write(s, "INSERT INTO documents (id, tenant_id, title) "
                                      "SELECT g, %s, 'bulk' FROM generate_series(%s, %s) g",
                                   (tenant, first, first + ROWS - 1))
        for key in keys:
            await _arrives(c, key, inside, after)
        _tx, inside, after = write(s, "TRUNCATE documents")
        for key in keys:
            await _arrives(c, key, inside, after)
        await _next_small_within_a_second(s, c, small)

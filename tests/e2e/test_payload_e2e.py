"""Invalidations that carry the row (#14), through the real stack: Postgres -> Debezium -> Kafka -> cdc
-> Redis -> gateway -> the Python client. The demo rules give cards and documents a payload."""

from __future__ import annotations

import time

from clients.python.client import Batch, Client, key_for
from connectors.stack_settings import StackSettings
from tests.e2e.helpers import client, new_board, next_id, subscribe_settled, write


async def batch_with(c: Client, key: str, timeout_s: float = 20.0) -> Batch:
    """The next batch that names `key` (batches of other keys are skipped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = await c.next_batch(max(0.01, deadline - time.monotonic()))
        if key in batch:
            return batch


async def test_payload_e2e_card_insert_update_delete_carry_the_row(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    card = next_id(s, "cards")
    key, tenant_key, board_key = f"card:{card}", f"tenant:1:card:{card}", f"board:{board}"
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, [key, tenant_key, board_key])
        _tx, inside, _after = write(s, "INSERT INTO cards (id, tenant_id, board_id, title, owner) "
                                       "VALUES (%s, 1, %s, 'payload', 'ada')", (card, board))
        batch = await batch_with(c, key)
        assert batch[key] > inside
        row = {"title": "payload", "status": "todo", "owner": "ada", "board_id": board, "version": 1}
        assert batch.data[key] == row
        assert batch.data.get(tenant_key, row) == row  # the same transaction: same row on every own key
        assert board_key not in batch.data  # not the card's own key: refetched

        write(s, "UPDATE cards SET status = 'done', version = version + 1 WHERE id = %s", (card,))
        batch = await batch_with(c, key)
        assert batch.data[key] == {**row, "status": "done", "version": 2}

        write(s, "DELETE FROM cards WHERE id = %s", (card,))
        batch = await batch_with(c, key)
        assert key in batch.data and batch.data[key] is None  # deleted


async def test_payload_e2e_toasted_unchanged_column_sends_the_key_without_data(stack_settings: StackSettings) -> None:
    """probe_text has the default replica identity: an update that leaves a TOASTed `val` alone gets
    Debezium's placeholder for it, so the key comes without data; a delete (key-only old row) is null."""
    s = stack_settings
    ident = f"toast-{next_id(s, 'boards')}"
    key = key_for("probe_text:{id}", {"id": ident})
    async with client(s, ["probe_text:*"]) as c:
        await subscribe_settled(c, [key])
        # ~6 KB of random hex: pglz finds nothing to compress, so PostgreSQL stores it out of line (TOAST).
        write(s, "INSERT INTO probe_text (id, val) VALUES "
                 "(%s, (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 190)))", (ident,))
        batch = await batch_with(c, key)
        assert len(batch.data[key]["val"]) == 190 * 32

        write(s, "UPDATE probe_text SET id = id WHERE id = %s", (ident,))  # `val` unchanged: not sent
        batch = await batch_with(c, key)
        assert key not in batch.data, batch.data  # the client refetches this key

        write(s, "UPDATE probe_text SET val = 'short' WHERE id = %s", (ident,))
        batch = await batch_with(c, key)
        assert batch.data[key] == {"val": "short"}

        write(s, "DELETE FROM probe_text WHERE id = %s", (ident,))
        batch = await batch_with(c, key)
        assert batch.data == {key: None}


async def test_payload_e2e_full_identity_keeps_an_unchanged_toasted_value(stack_settings: StackSettings) -> None:
    """documents has REPLICA IDENTITY FULL: Debezium takes the unchanged TOASTed body from the old row."""
    s = stack_settings
    tenant = 2000 + next_id(s, "boards")
    doc = next_id(s, "documents")
    key = f"tenant:{tenant}:doc:{doc}"
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, [key])
        write(s, "INSERT INTO documents (id, tenant_id, title, body) VALUES "
                 "(%s, %s, 'toast', (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 190)))",
              (doc, tenant))
        body = (await batch_with(c, key)).data[key]["body"]
        write(s, "UPDATE documents SET title = 'renamed' WHERE id = %s", (doc,))
        assert (await batch_with(c, key)).data[key] == {"title": "renamed", "body": body}
        write(s, "DELETE FROM documents WHERE id = %s", (doc,))
        assert (await batch_with(c, key)).data == {key: None}

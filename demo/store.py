"""The board's data access: reads (from the replica when one is configured) and writes with an
expected version, an idempotency key, an outbox row and a write token, all in one transaction.

Async all the way, through connection pools opened once (`open`/`close`, in the app's lifespan):
the way an async handler should reach Postgres, never a blocking call or a connection per request.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from clients.python.tokens import write_token_async

COLUMNS = ("todo", "doing", "done")
CARD_FIELDS = "id, board_id, tenant_id, title, status, owner, version, " \
              "(extract(epoch from updated_at) * 1000)::bigint AS updated_ms"


class Conflict(Exception):
    """The card changed since the client read it; carries the current card."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("version conflict")
        self.current = current


POOL_MIN, POOL_MAX = 1, 8
POOL_TIMEOUT_S = 10.0


class Store:
    def __init__(self, write_dsn: str, read_dsn: str) -> None:
        self.write_dsn, self.read_dsn = write_dsn, read_dsn
        self._writes = AsyncConnectionPool(write_dsn, min_size=POOL_MIN, max_size=POOL_MAX, timeout=POOL_TIMEOUT_S,
                                           kwargs={"row_factory": dict_row}, open=False)
        self._reads = self._writes if read_dsn == write_dsn else AsyncConnectionPool(
            read_dsn, min_size=POOL_MIN, max_size=POOL_MAX, timeout=POOL_TIMEOUT_S,
            kwargs={"row_factory": dict_row, "autocommit": True}, open=False)

    async def open(self) -> None:
        await self._writes.open()
        if self._reads is not self._writes:
            await self._reads.open()

    async def close(self) -> None:
        if self._reads is not self._writes:
            await self._reads.close()
        await self._writes.close()

    @property
    def reads_from(self) -> str:
        return "replica" if self.read_dsn != self.write_dsn else "primary"

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self._reads.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()  # type: ignore[return-value]

    async def board(self, board_id: int) -> dict[str, Any] | None:
        rows = await self._read("SELECT id, tenant_id, name FROM boards WHERE id = %s", (board_id,))
        if not rows:
            return None
        cards = await self._read(f"SELECT {CARD_FIELDS} FROM cards WHERE board_id = %s ORDER BY id", (board_id,))
        return {**rows[0], "cards": cards, "reads_from": self.reads_from}

    async def index(self, board_id: int) -> list[dict[str, Any]]:
        """Just the ids and versions: enough to tell which cards to refetch."""
        return await self._read("SELECT id, version FROM cards WHERE board_id = %s ORDER BY id", (board_id,))

    async def card(self, card_id: int) -> dict[str, Any] | None:
        rows = await self._read(f"SELECT {CARD_FIELDS} FROM cards WHERE id = %s", (card_id,))
        return rows[0] if rows else None

    async def update_card(self, card_id: int, changes: dict[str, str], expected_version: int,
                          idempotency_key: str) -> dict[str, Any]:
        """Apply `changes` if the card is still at `expected_version`; replays of the same
        idempotency key return the first response. Raises Conflict otherwise."""
        async with self._writes.connection() as conn, conn.transaction():
            done = await (await conn.execute("SELECT response FROM idempotency_keys WHERE key = %s",
                                             (idempotency_key,))).fetchone()
            if done is not None:
                return {**done["response"], "replayed": True}  # type: ignore[call-overload]
            sets = ", ".join(f"{column} = %s" for column in changes)
            row: Any = await (await conn.execute(
                f"UPDATE cards SET {sets}, version = version + 1, updated_at = clock_timestamp() "
                f"WHERE id = %s AND version = %s RETURNING {CARD_FIELDS}",
                (*changes.values(), card_id, expected_version))).fetchone()
            if row is None:
                raise Conflict(await self.card_from(conn, card_id))
            await conn.execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, keys) VALUES "
                "('card', %s, 'card.updated', %s, %s)",
                (str(card_id), json.dumps({"changes": changes, "version": row["version"]}),
                 [f"tenant:{row['tenant_id']}:card-events:{card_id}"]))
            token = await write_token_async(conn)
            response = {"card": row, "token": token}
            await conn.execute("INSERT INTO idempotency_keys (key, response) VALUES (%s, %s)",
                               (idempotency_key, json.dumps(response)))
        return response

    async def add_card(self, board_id: int, title: str, owner: str | None) -> dict[str, Any]:
        async with self._writes.connection() as conn, conn.transaction():
            row = await (await conn.execute(
                f"INSERT INTO cards (tenant_id, board_id, title, owner) "
                f"SELECT tenant_id, id, %s, %s FROM boards WHERE id = %s RETURNING {CARD_FIELDS}",
                (title, owner, board_id))).fetchone()
            token = await write_token_async(conn)
        return {"card": row, "token": token}

    @staticmethod
    async def card_from(conn: AsyncConnection[Any], card_id: int) -> dict[str, Any] | None:
        row = await (await conn.execute(f"SELECT {CARD_FIELDS} FROM cards WHERE id = %s",
                                        (card_id,))).fetchone()
        return dict(row) if row else None

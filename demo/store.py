"""The board's data access: reads (from the replica when one is configured) and writes with an
expected version, an idempotency key, an outbox row and a write token, all in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from gateway.tokens import write_token

COLUMNS = ("todo", "doing", "done")
CARD_FIELDS = "id, board_id, tenant_id, title, status, owner, version, " \
              "(extract(epoch from updated_at) * 1000)::bigint AS updated_ms"


class Conflict(Exception):
    """The card changed since the client read it; carries the current card."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        super().__init__("version conflict")
        self.current = current


@dataclass(frozen=True)
class Store:
    write_dsn: str
    read_dsn: str

    @property
    def reads_from(self) -> str:
        return "replica" if self.read_dsn != self.write_dsn else "primary"

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with psycopg.connect(self.read_dsn, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def board(self, board_id: int) -> dict[str, Any] | None:
        rows = self._read("SELECT id, tenant_id, name FROM boards WHERE id = %s", (board_id,))
        if not rows:
            return None
        cards = self._read(f"SELECT {CARD_FIELDS} FROM cards WHERE board_id = %s ORDER BY id", (board_id,))
        return {**rows[0], "cards": cards, "reads_from": self.reads_from}

    def index(self, board_id: int) -> list[dict[str, Any]]:
        """Just the ids and versions: enough to tell which cards to refetch."""
        return self._read("SELECT id, version FROM cards WHERE board_id = %s ORDER BY id", (board_id,))

    def card(self, card_id: int) -> dict[str, Any] | None:
        rows = self._read(f"SELECT {CARD_FIELDS} FROM cards WHERE id = %s", (card_id,))
        return rows[0] if rows else None

    def update_card(self, card_id: int, changes: dict[str, str], expected_version: int,
                    idempotency_key: str) -> dict[str, Any]:
        """Apply `changes` if the card is still at `expected_version`; replays of the same
        idempotency key return the first response. Raises Conflict otherwise."""
        with psycopg.connect(self.write_dsn, row_factory=dict_row) as conn:
            done = conn.execute("SELECT response FROM idempotency_keys WHERE key = %s", (idempotency_key,)).fetchone()
            if done is not None:
                return {**done["response"], "replayed": True}
            sets = ", ".join(f"{column} = %s" for column in changes)
            row = conn.execute(
                f"UPDATE cards SET {sets}, version = version + 1, updated_at = clock_timestamp() "
                f"WHERE id = %s AND version = %s RETURNING {CARD_FIELDS}",
                (*changes.values(), card_id, expected_version)).fetchone()
            if row is None:
                conn.rollback()
                raise Conflict(self.card_from(conn, card_id))
            conn.execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, keys) VALUES "
                "('card', %s, 'card.updated', %s, %s)",
                (str(card_id), json.dumps({"changes": changes, "version": row["version"]}),
                 [f"tenant:{row['tenant_id']}:card-events:{card_id}"]))
            token = write_token(conn)
            response = {"card": row, "token": token}
            conn.execute("INSERT INTO idempotency_keys (key, response) VALUES (%s, %s)",
                         (idempotency_key, json.dumps(response)))
            conn.commit()
        return response

    def add_card(self, board_id: int, title: str, owner: str | None) -> dict[str, Any]:
        with psycopg.connect(self.write_dsn, row_factory=dict_row) as conn:
            row = conn.execute(
                f"INSERT INTO cards (tenant_id, board_id, title, owner) "
                f"SELECT tenant_id, id, %s, %s FROM boards WHERE id = %s RETURNING {CARD_FIELDS}",
                (title, owner, board_id)).fetchone()
            token = write_token(conn)
            conn.commit()
        return {"card": row, "token": token}

    @staticmethod
    def card_from(conn: psycopg.Connection[Any], card_id: int) -> dict[str, Any] | None:
        row = conn.execute(f"SELECT {CARD_FIELDS} FROM cards WHERE id = %s", (card_id,)).fetchone()
        return dict(row) if row else None

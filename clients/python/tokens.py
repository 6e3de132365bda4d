"""Taking a read-your-writes token inside the app's own transaction (docs/consistency.md).

The token names the transaction; taking it also writes a transactional logical-decoding message, so
even a transaction that touched no captured table reaches the stream and is released. Equivalent SQL
for apps in other languages (one statement, so Drizzle/Prisma users can run it too):

    SELECT 'fw1:' || (pg_current_xact_id()::text::bigint % 4294967296)::text AS token,
           pg_logical_emit_message(true, 'freshwire.token', '') AS _lsn;

(the xid modulo 2^32 is the transaction id Debezium reports). The gateway parses tokens with
gateway.tokens.parse_token.
"""

from __future__ import annotations

from typing import Any

WRITE_TOKEN_SQL = (
    "SELECT 'fw1:' || (pg_current_xact_id()::text::bigint % 4294967296)::text, "
    "pg_logical_emit_message(true, 'freshwire.token', '')"
)


def write_token(conn: Any) -> str:
    """Call inside the writing transaction with a psycopg (3) connection or cursor; returns the token."""
    return _first(conn.execute(WRITE_TOKEN_SQL).fetchone())


async def write_token_async(conn: Any) -> str:
    """The same for psycopg's AsyncConnection / AsyncCursor."""
    cursor = await conn.execute(WRITE_TOKEN_SQL)
    return _first(await cursor.fetchone())


def _first(row: Any) -> str:
    """The token column, whatever row factory the caller's connection uses (tuples, dicts, ...)."""
    if isinstance(row, dict):
        return str(next(iter(row.values())))
    return str(row[0])

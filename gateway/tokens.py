"""Read-your-writes tokens.

An app takes a token inside its writing transaction; the token names the transaction. It becomes
*visible* once that transaction's invalidations are released (after every configured replica has
replayed its commit), which the gateway reports over WebSocket (`await`) or HTTP (`/v1/wait`).

Taking a token also writes a transactional logical-decoding message, so even a transaction that
touched no captured table reaches the stream as BEGIN … END and is released: a token never hangs
because its transaction was invisible to Debezium. Equivalent SQL for apps in other languages:

    SELECT 'fw1:' || (pg_current_xact_id()::text::bigint % 4294967296)::text AS token,
           pg_logical_emit_message(true, 'freshwire.token', '') AS _lsn;

(the xid modulo 2^32 is the transaction id Debezium reports).
"""

from __future__ import annotations

import re
from typing import Any

from gateway import errors as E
from gateway.errors import ProtocolError

PREFIX = "fw1:"
TOKEN_RE = re.compile(r"^fw1:([0-9]{1,10})\Z")
WRITE_TOKEN_SQL = (
    "SELECT 'fw1:' || (pg_current_xact_id()::text::bigint % 4294967296)::text, "
    "pg_logical_emit_message(true, 'freshwire.token', '')"
)


def parse_token(token: object, request_id: int | None = None) -> str:
    """The transaction id a token names; ProtocolError(bad_token) for anything else."""
    match = TOKEN_RE.match(token) if isinstance(token, str) else None
    if match is None:
        raise ProtocolError(E.BAD_TOKEN, "a write token looks like fw1:<transaction id>", request_id)
    return str(int(match[1]))


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

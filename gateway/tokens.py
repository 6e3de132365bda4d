"""Read-your-writes tokens, the gateway's side: parsing `fw1:<transaction id>`.

A token becomes *visible* once its transaction's invalidations are released (after every configured
replica has replayed its commit), which the gateway reports over WebSocket (`await`) or HTTP
(`/v1/wait`). Taking one, in the app's own transaction, is client code: clients/python/tokens.py
(write_token and write_token_async are still importable from here).
"""

from __future__ import annotations

import re

from gateway import errors as E
from gateway.errors import ProtocolError

PREFIX = "fw1:"
TOKEN_RE = re.compile(r"^fw1:([0-9]{1,10})\Z")


def parse_token(token: object, request_id: int | None = None) -> str:
    """The transaction id a token names; ProtocolError(bad_token) for anything else."""
    match = TOKEN_RE.match(token) if isinstance(token, str) else None
    if match is None:
        raise ProtocolError(E.BAD_TOKEN, "a write token looks like fw1:<transaction id>", request_id)
    return str(int(match[1]))


# Taking a token is the writing app's side: clients/python/tokens.py (kept importable from here).
from clients.python.tokens import WRITE_TOKEN_SQL as WRITE_TOKEN_SQL  # noqa: E402
from clients.python.tokens import write_token as write_token  # noqa: E402
from clients.python.tokens import write_token_async as write_token_async  # noqa: E402

"""Keep tokens out of the logs: uvicorn logs each WebSocket handshake with its path and query
string, and browsers pass the token in the query (`/ws?token=...`)."""

from __future__ import annotations

import logging
import re

TOKEN_IN_QUERY = re.compile(r"((?:^|[?&\s])(?:token|access_token)=)[^&\s\"']+", re.IGNORECASE)
REDACTED = "<redacted>"
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(rf"\g<1>{REDACTED}", text)


class TokenRedactor(logging.Filter):
    """Rewrites a record's message with every `token=` query value replaced; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install() -> None:
    for name in UVICORN_LOGGERS:
        logging.getLogger(name).addFilter(TokenRedactor())

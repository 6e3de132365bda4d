"""Tokens never reach the gateway's logs (uvicorn logs the handshake's query string)."""

from __future__ import annotations

import logging

from gateway.logs import REDACTED, TokenRedactor, redact


def test_redact_replaces_token_values_and_keeps_the_rest() -> None:
    assert redact('127.0.0.1:5 - "WebSocket /ws?token=eyJ.a.b&x=1" [accepted]') == \
        f'127.0.0.1:5 - "WebSocket /ws?token={REDACTED}&x=1" [accepted]'
    assert redact("/ws?a=1&access_token=abc") == f"/ws?a=1&access_token={REDACTED}"
    assert redact("no secrets here; tokenizer=3") == "no secrets here; tokenizer=3"


def test_the_filter_rewrites_formatted_records_and_keeps_them() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/ws?token=secret.jwt.value"), None)
    assert TokenRedactor().filter(record)
    assert "secret" not in record.getMessage() and REDACTED in record.getMessage()

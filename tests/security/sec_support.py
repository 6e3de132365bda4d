"""Helpers for the security suite: the gateway test helpers (tests/gateway/gw_support.py), the sets of
documented outcomes, and a check that a reply is one of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

GATEWAY_TESTS = Path(__file__).resolve().parent.parent / "gateway"
if str(GATEWAY_TESTS) not in sys.path:
    sys.path.insert(0, str(GATEWAY_TESTS))

from gw_support import SECRET, SUBPROTOCOL, Gateway, gateway_factory, recv, settings, token, ver  # noqa: E402

from gateway import errors as E  # noqa: E402

__all__ = ["SECRET", "SUBPROTOCOL", "Gateway", "gateway_factory", "recv", "settings", "token", "ver"]

SERVER_TYPES = frozenset({"subscribed", "unsubscribed", "pong", "visible", "invalidate", "error"})
CLOSE_CODES = frozenset({E.CLOSE_SHUTDOWN, E.CLOSE_RESTART, E.CLOSE_TOO_BIG, E.CLOSE_AUTH, E.CLOSE_POLICY,
                         E.CLOSE_OVER_CAPACITY})
HTTP_ERROR_CODES = E.ERROR_CODES | {"auth_failed"}

# Generated inputs are sent as fast as the test can: lift the rate limit where it is not under test,
# and keep awaits short so a well-formed await never holds a test up.
FAST = {"max_messages_per_s": 1e6, "await_max_ms": 50}


def assert_documented(msg: dict[str, Any]) -> None:
    """A server message of a documented type; an error carries a documented code."""
    assert msg.get("type") in SERVER_TYPES, msg
    if msg["type"] == "error":
        assert msg.get("code") in E.ERROR_CODES, msg


def exchange(gw: Gateway, ws: Any, send: Any) -> list[dict[str, Any]]:
    """Send one frame (str: text, bytes: binary), then ping: every message before the pong, each checked
    to be documented. The pong proves the connection survived the frame."""
    if isinstance(send, bytes):
        ws.send_bytes(send)
    else:
        ws.send_text(send)
    replies = gw.ping(ws)
    for msg in replies:
        assert_documented(msg)
    return replies


def codes(replies: list[dict[str, Any]]) -> list[str]:
    return [m.get("code", m["type"]) for m in replies]

"""Every error code and close code a client can see, in one place (documented in docs/protocol.md)."""

from __future__ import annotations

from typing import Final

# Error codes, sent as {"type":"error","code":...}; the connection stays open.
BAD_JSON: Final = "bad_json"                  # the text frame is not JSON
BAD_REQUEST: Final = "bad_request"            # JSON, but not a valid request (shape or field types)
UNKNOWN_OP: Final = "unknown_op"              # "op" is not one this server knows
INVALID_KEY: Final = "invalid_key"            # a key is empty, too long or has characters outside the key alphabet
INVALID_VERSION: Final = "invalid_version"    # a "since" version is not 16 lowercase hex digits
TOO_MANY_KEYS: Final = "too_many_keys"        # the subscription limit per connection would be exceeded
FORBIDDEN: Final = "forbidden"                # the token's key patterns do not cover these keys
RATE_LIMITED: Final = "rate_limited"          # more messages per second than allowed; the message was dropped
BINARY_UNSUPPORTED: Final = "binary_unsupported"  # binary frames are not part of the protocol
UNAVAILABLE: Final = "unavailable"            # the version store did not answer; retry
BAD_TOKEN: Final = "bad_token"                # an await's write token is not fw1:<transaction id>
TIMEOUT: Final = "timeout"                    # the awaited transaction was not released within timeout_ms
TOO_MANY_AWAITS: Final = "too_many_awaits"    # the connection (or the process) holds its maximum of pending awaits

ERROR_CODES: Final = frozenset({
    BAD_JSON, BAD_REQUEST, UNKNOWN_OP, INVALID_KEY, INVALID_VERSION, TOO_MANY_KEYS, FORBIDDEN,
    RATE_LIMITED, BINARY_UNSUPPORTED, UNAVAILABLE, BAD_TOKEN, TIMEOUT, TOO_MANY_AWAITS,
})

# WebSocket close codes.
CLOSE_SHUTDOWN: Final = 1001         # server going away: reconnect (to any gateway) and resume
CLOSE_RESTART: Final = 1012          # server shutting down (what uvicorn sends open sockets on SIGTERM): same
CLOSE_TOO_BIG: Final = 1009          # a frame larger than the frame limit (closed by the server's WebSocket layer)
CLOSE_AUTH: Final = 4001             # missing, malformed, badly signed or expired token
CLOSE_POLICY: Final = 4008           # limits violated repeatedly (rate, unread replies)
CLOSE_OVER_CAPACITY: Final = 4013    # the gateway holds its maximum number of connections: try another or later
CLOSE_INTERNAL: Final = 1011         # a fault of the gateway (logged with the connection id): reconnect, resume


class ProtocolError(Exception):
    """A client message that gets an error reply; carries the stable code and the request id."""

    def __init__(self, code: str, message: str, request_id: int | None = None,
                 keys: list[str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.keys = keys


class AuthError(Exception):
    """The token was refused; the connection closes with CLOSE_AUTH (HTTP answers 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SettingsError(ValueError):
    """A FRESHWIRE_* setting is missing or malformed; the message names it."""


# Close reasons sent with the codes above (the text after the code in the close frame).
REASON_TOKEN_EXPIRED: Final = "token expired"
REASON_RATE: Final = "rate limit exceeded"
REASON_OVER_CAPACITY: Final = "over capacity"
REASON_INTERNAL: Final = "internal error"

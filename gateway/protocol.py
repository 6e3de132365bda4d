"""Protocol freshwire.v1, sans I/O: client frames in (text) -> typed requests; server messages out.

See docs/protocol.md for the full description. Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from contract.keys import valid_key  # the key alphabet lives with the encoding of values in keys
from gateway import errors as E
from gateway.errors import ProtocolError

SUBPROTOCOL = "freshwire.v1"
VERSION_RE = re.compile(r"^[0-9a-f]{16}\Z")
MAX_ID = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: int | None
    keys: tuple[str, ...]
    since: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int | None
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | None


@dataclass(frozen=True, slots=True)
class Await:
    id: int | None
    token: str
    timeout_ms: int


Request = Subscribe | Unsubscribe | Ping | Await


def _request_id(body: dict[str, Any]) -> int | None:
    rid = body.get("id")
    if rid is None:
        return None
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid <= MAX_ID:
        raise ProtocolError(E.BAD_REQUEST, "id must be an integer from 0 to 2^53-1")
    return rid


def _keys(body: dict[str, Any], rid: int | None, max_keys: int, field: str = "keys") -> tuple[str, ...]:
    keys = body.get(field, [])
    if not isinstance(keys, list):
        raise ProtocolError(E.BAD_REQUEST, f"{field} must be a list of strings", rid)
    if len(keys) > max_keys:
        raise ProtocolError(E.TOO_MANY_KEYS, f"at most {max_keys} keys per connection", rid)
    bad = [k for k in keys if not valid_key(k)]
    if bad:
        shown = [k if isinstance(k, str) else repr(k) for k in bad[:5]]
        raise ProtocolError(E.INVALID_KEY, "keys are 1-256 characters of A-Z a-z 0-9 _ . : @ / + = -", rid,
                            keys=[s[:256] for s in shown])
    return tuple(dict.fromkeys(keys))


def _since(body: dict[str, Any], rid: int | None, max_keys: int) -> dict[str, str | None]:
    since = body.get("since", {})
    if since is None:
        return {}
    if not isinstance(since, dict):
        raise ProtocolError(E.BAD_REQUEST, "since must be an object of key -> version", rid)
    if len(since) > max_keys:
        raise ProtocolError(E.TOO_MANY_KEYS, f"at most {max_keys} keys per connection", rid)
    out: dict[str, str | None] = {}
    for key, version in since.items():
        if not valid_key(key):
            raise ProtocolError(E.INVALID_KEY, "keys are 1-256 characters of A-Z a-z 0-9 _ . : @ / + = -", rid,
                                keys=[key[:256]])
        if version is not None and (not isinstance(version, str) or not VERSION_RE.match(version)):
            raise ProtocolError(E.INVALID_VERSION, f"since[{key!r}] must be 16 lowercase hex digits or null", rid)
        out[key] = version
    return out


def timeout_ms(value: object, max_ms: int, rid: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= max_ms:
        raise ProtocolError(E.BAD_REQUEST, f"timeout_ms must be an integer from 0 to {max_ms}", rid)
    return value


def parse_request(text: str, max_keys: int, await_max_ms: int = 30000) -> Request:
    """One client text frame -> a request, or ProtocolError with a stable code."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # ValueError also covers integers beyond int_max_str_digits
        raise ProtocolError(E.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(E.BAD_REQUEST, "frame must be a JSON object")
    rid = _request_id(body)
    op = body.get("op")
    if op == "subscribe":
        keys = _keys(body, rid, max_keys)
        since = _since(body, rid, max_keys)
        merged = tuple(dict.fromkeys([*keys, *since]))
        if len(merged) > max_keys:
            raise ProtocolError(E.TOO_MANY_KEYS, f"at most {max_keys} keys per connection", rid)
        return Subscribe(rid, merged, since)
    if op == "unsubscribe":
        return Unsubscribe(rid, _keys(body, rid, max_keys))
    if op == "ping":
        return Ping(rid)
    if op == "await":
        token = body.get("token")
        if not isinstance(token, str) or len(token) > 64:
            raise ProtocolError(E.BAD_TOKEN, "token must be a write token string", rid)
        return Await(rid, token, timeout_ms(body.get("timeout_ms", 5000), await_max_ms, rid))
    if not isinstance(op, str):
        raise ProtocolError(E.BAD_REQUEST, "op must be a string", rid)
    raise ProtocolError(E.UNKNOWN_OP, f"unknown op {op[:64]!r}", rid)


def _dump(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def _with_id(body: dict[str, Any], rid: int | None) -> dict[str, Any]:
    if rid is not None:
        body["id"] = rid
    return body


def subscribed(rid: int | None, versions: dict[str, str | None], watermark: str | None) -> str:
    return _dump(_with_id({"type": "subscribed", "versions": versions, "watermark": watermark}, rid))


def unsubscribed(rid: int | None, keys: tuple[str, ...]) -> str:
    return _dump(_with_id({"type": "unsubscribed", "keys": list(keys)}, rid))


def pong(rid: int | None) -> str:
    return _dump(_with_id({"type": "pong"}, rid))


def visible(rid: int | None, token: str, version: str) -> str:
    return _dump(_with_id({"type": "visible", "token": token, "version": version}, rid))


def lapse(reason: str, keys: list[str], version: str | None) -> str:
    """A guarantee lapsed for these subscribed keys (docs/protocol.md `lapse`)."""
    return _dump({"type": "lapse", "reason": reason, "keys": keys, "version": version})


def invalidate(keys: dict[str, str], data: dict[str, str] | None = None) -> str:
    """`data`: key -> the payload as compact JSON text (the optional `data` field, docs/protocol.md),
    spliced in as it is, never parsed again."""
    if data:
        rows = ",".join(f"{json.dumps(key)}:{text}" for key, text in data.items())
        return _dump({"type": "invalidate", "keys": keys})[:-1] + ',"data":{' + rows + "}}"
    if len(keys) <= INVALIDATE_CACHED_KEYS:
        return _invalidate_of(tuple(keys.items()))
    return _dump({"type": "invalidate", "keys": keys})


# Fan-out sends the same small invalidate to every subscriber of a key: encode it once.
INVALIDATE_CACHED_KEYS = 4
INVALIDATE_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=INVALIDATE_CACHE_SIZE)
def _invalidate_of(items: tuple[tuple[str, str], ...]) -> str:
    return _dump({"type": "invalidate", "keys": dict(items)})


def error(code: str, message: str, rid: int | None = None, keys: list[str] | None = None) -> str:
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if keys:
        body["keys"] = keys
    return _dump(_with_id(body, rid))


def error_of(exc: ProtocolError) -> str:
    return error(exc.code, exc.message, exc.request_id, exc.keys)

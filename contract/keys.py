"""Cache keys on the wire: the key alphabet, and the reversible encoding of column values in keys.

The protocol's keys are 1-256 characters of `A-Z a-z 0-9 _ . : @ / + = -` (docs/protocol.md). A rule
template renders column values into keys, and values can hold anything (`José Ñ,x*`), so each value
is encoded: characters of `A-Z a-z 0-9 _ . @ + -` stay, every other character is written as `=XX`
per byte of its UTF-8 form (uppercase hex), like quoted-printable. `:` `/` and `=` inside a value are
encoded too, so a value can never forge a template's separators, and decoding is exact. Booleans are
`true`/`false`. Clients build the same key with the same helper (gateway/client.py `key_for`,
clients/js `keyFor`).
"""

from __future__ import annotations

import re

MAX_KEY_LENGTH = 256
KEY_RE = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,256}\Z")  # \Z: `$` would allow a trailing newline
_VALUE_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@+-")
_ESCAPED = re.compile(r"=([0-9A-F]{2})")


def valid_key(key: object) -> bool:
    return isinstance(key, str) and KEY_RE.match(key) is not None


def encode_value(value: object) -> str:
    """One column value as it appears inside a key."""
    if type(value) is int:  # the common case, on the consumer's hot path: digits and '-' only
        return str(value)
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if (text.isascii() and text.isalnum()) or all(c in _VALUE_SAFE for c in text):
        return text
    return "".join(c if c in _VALUE_SAFE else "".join(f"={b:02X}" for b in c.encode("utf-8", "surrogatepass"))
                   for c in text)


def decode_value(text: str) -> str:
    """The inverse of encode_value (for a value's text; booleans come back as 'true'/'false')."""
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(text):
        raw += text[pos:match.start()].encode()
        raw.append(int(match[1], 16))
        pos = match.end()
    raw += text[pos:].encode()
    return raw.decode("utf-8", "surrogatepass")


def encode_key(key: str) -> str:
    """A free-form key (an outbox row's `keys`) made valid: characters outside the key alphabet are
    encoded as in values; `:` `/` and `=` keep their meaning."""
    if KEY_RE.match(key):
        return key
    return "".join(c if c in _VALUE_SAFE or c in ":/=" else "".join(f"={b:02X}" for b in c.encode("utf-8",
                                                                                                   "surrogatepass"))
                   for c in key)


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def key_for(template: str, values: dict[str, object]) -> str:
    """The key a rule template renders for these column values, as the consumer renders it: the
    same on every side (clients/js `keyFor` is the same function). Raises KeyError for a missing value."""
    return _PLACEHOLDER.sub(lambda m: encode_value(values[m[1]]), template)

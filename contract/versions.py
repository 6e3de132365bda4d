"""Versions: a transaction's commit end position in the WAL, as 16 zero-padded lowercase hex digits.

Commit records are written to the WAL in commit order, so their end positions strictly increase in
commit order, and fixed-width hex makes plain string comparison agree with numeric comparison.
"""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"^[0-9a-f]{16}\Z")
LSN_TEXT_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")
MAX_LSN = (1 << 64) - 1


def version_of_lsn(lsn: int) -> str:
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"LSN out of range: {lsn}")
    return f"{lsn:016x}"


def lsn_of_version(version: str) -> int:
    if not VERSION_RE.match(version):
        raise ValueError(f"not a version: {version!r}")
    return int(version, 16)


def lsn_of_text(text: str) -> int:
    """PostgreSQL's textual LSN ('16/B374D848') as an integer."""
    match = LSN_TEXT_RE.match(text)
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(match[1], 16) << 32) | int(match[2], 16)


def is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_RE.match(value) is not None

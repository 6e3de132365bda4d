"""The ops topic's record (`freshwire.invalidations`), defined once: the consumer writes it, the
cache-purge sink reads it and posts the same JSON (docs/cdc.md, docs/sink.md).

    {"version": "...", "txId": "...", "commitTs": ms, "keys": [...], "prefixes": [...],
     "ops": {"schema.table": {"c": n, ...}}, "degraded": true?, "missing": {"schema.table": n}?}

Pure: a record in, bytes out, and back; a value that is not one raises OpsRecordError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from contract.versions import is_version


class OpsRecordError(ValueError):
    """A value on the ops topic that is not an ops record; carries a stable code."""

    code: Literal["bad_record"] = "bad_record"
    retriable = False


@dataclass(frozen=True)
class OpsRecord:
    version: str
    tx_id: str
    commit_ts: int
    keys: tuple[str, ...]
    prefixes: tuple[str, ...]
    ops: Mapping[str, Any]
    degraded: bool = False
    missing: Mapping[str, int] = field(default_factory=dict)


def encode(record: OpsRecord) -> bytes:
    """Compact JSON, the same bytes for the same record (the sink's body for every attempt)."""
    body: dict[str, Any] = {
        "version": record.version,
        "txId": record.tx_id,
        "commitTs": record.commit_ts,
        "keys": list(record.keys),
        "prefixes": list(record.prefixes),
        "ops": dict(record.ops),
    }
    if record.degraded:
        body["degraded"] = True
    if record.missing:
        body["missing"] = dict(record.missing)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _strings(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OpsRecordError(f"{name} must be a list of strings")
    return tuple(value)


def decode(value: bytes | None) -> OpsRecord:
    """The record in an ops topic value; raises OpsRecordError if it is not one."""
    if not value:
        raise OpsRecordError("empty record")
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpsRecordError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise OpsRecordError("not a JSON object")
    version = doc.get("version")
    if not is_version(version):
        raise OpsRecordError(f"version must be 16 lowercase hex digits, got {version!r}")
    tx_id, commit_ts, ops = doc.get("txId", ""), doc.get("commitTs", 0), doc.get("ops", {})
    if not isinstance(tx_id, str | int) or isinstance(tx_id, bool):
        raise OpsRecordError("txId must be a string")
    if not isinstance(commit_ts, int) or isinstance(commit_ts, bool):
        raise OpsRecordError("commitTs must be an integer (ms)")
    if not isinstance(ops, dict):
        raise OpsRecordError("ops must be an object")
    missing = doc.get("missing", {})
    if not isinstance(missing, dict) or not all(isinstance(n, int) for n in missing.values()):
        raise OpsRecordError("missing must be an object of counts")
    return OpsRecord(version=str(version), tx_id=str(tx_id), commit_ts=commit_ts,
                     keys=_strings("keys", doc.get("keys", [])), prefixes=_strings("prefixes", doc.get("prefixes", [])),
                     ops=ops, degraded=doc.get("degraded") is True, missing=missing)

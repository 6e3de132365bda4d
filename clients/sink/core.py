"""The sink's pure core: ops record -> signed request, HTTP answer -> what to do next.

No sockets, no Kafka, no clock, no randomness: the I/O loop (`clients.sink.run`) passes the time and
a random number in, so every decision here is a table test.

Guarantees the loop builds on:
- `request_body` is the same bytes for every attempt of one version; only the timestamp and the
  signature change between attempts, and `Idempotency-Key` is always the version.
- `decide` never answers "retry" once `max_attempts` attempts were made.
- `Backoff.delay_ms` stays within `[min_ms, max_ms]`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from contract.ops_record import OpsRecord, OpsRecordError, decode, encode

SIGNATURE_HEADER = "X-Freshwire-Signature"
TIMESTAMP_HEADER = "X-Freshwire-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_SCHEME = "sha256="
DEFAULT_TOLERANCE_S = 300

Outcome = Literal["done", "retry", "reject"]
Action = Literal["done", "retry", "dead_letter"]
DeadLetterCode = Literal["bad_record", "rejected", "exhausted"]


# The ops record is defined once, beside the consumer that writes it (cdc/ops_record.py): the sink reads
# it and posts the same JSON, so the body is the same bytes for every attempt of one version.
BadRecord = OpsRecordError
Batch = OpsRecord
parse_record = decode
request_body = encode


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the shared secret over `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_SCHEME + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now_s: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """The receiver's check: a well-formed, recent timestamp and a matching signature (constant time)."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def request_headers(secret: str, version: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        IDEMPOTENCY_HEADER: version,
    }


def classify(status: int | None) -> Outcome:
    """What an answer means; `None` is no answer (connection refused or reset, timeout).

    2xx: delivered. 409: the receiver already applied this Idempotency-Key, also delivered.
    408, 429, 5xx and no answer: try again. Any other status (other 4xx, and 1xx/3xx, which mean
    the URL is wrong: redirects are not followed) is permanent.
    """
    if status is None:
        return "retry"
    if 200 <= status < 300 or status == 409:
        return "done"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    return "reject"


def retry_after_ms(value: str | None) -> float | None:
    """A `Retry-After` header in delta-seconds, as milliseconds (HTTP dates are ignored)."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip()) * 1000.0


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with equal jitter: attempt n waits between half and all of
    `min_ms * 2**(n-1)`, never less than `min_ms` and never more than `max_ms`."""

    min_ms: float
    max_ms: float

    def delay_ms(self, attempt: int, rand: float, retry_after: float | None = None) -> float:
        """The wait after failed attempt `attempt` (1-based); `rand` in [0, 1)."""
        base = min(self.max_ms, self.min_ms * 2.0 ** min(max(attempt - 1, 0), 62))
        delay = max(self.min_ms, base * (0.5 + 0.5 * rand))
        if retry_after is not None:
            delay = max(delay, retry_after)  # the receiver asked for longer: honour it, within max_ms
        return min(self.max_ms, delay)


@dataclass(frozen=True)
class Step:
    action: Action
    delay_ms: float = 0.0
    code: DeadLetterCode | None = None


def decide(status: int | None, attempt: int, max_attempts: int, backoff: Backoff, rand: float,
           retry_after: float | None = None) -> Step:
    """After attempt number `attempt` (1-based) got `status`: done, retry after a delay, or dead-letter."""
    outcome = classify(status)
    if outcome == "done":
        return Step("done")
    if outcome == "reject":
        return Step("dead_letter", code="rejected")
    if attempt >= max_attempts:
        return Step("dead_letter", code="exhausted")
    return Step("retry", delay_ms=backoff.delay_ms(attempt, rand, retry_after))


def already_done(version: str, last_done: str) -> bool:
    """Versions increase along the ops topic, so one at or below the last one finished is a replay."""
    return bool(last_done) and version <= last_done

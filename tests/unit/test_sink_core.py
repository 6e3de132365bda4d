"""Table tests of the sink's pure core: body, signature, classification, back-off, decisions, settings."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from clients.sink.core import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Backoff,
    BadRecord,
    Step,
    already_done,
    classify,
    decide,
    parse_record,
    request_body,
    request_headers,
    retry_after_ms,
    sign,
    verify,
)
from clients.sink.settings import Settings, SettingsError, load_settings

OPS = (b'{"version":"00000000019bb500","txId":"966","commitTs":1795803066713,'
       b'"keys":["card:1","board:2","board:1"],"prefixes":[],"ops":{"public.cards":{"u":1}}}')
SECRET = "s3cret"
NOW = 1_795_803_066


def test_sink_core_body_carries_the_ops_record_fields() -> None:
    batch = parse_record(OPS)
    assert batch.version == "00000000019bb500" and batch.tx_id == "966"
    assert json.loads(request_body(batch)) == json.loads(OPS)
    assert request_body(batch) == request_body(parse_record(OPS))  # same bytes for every attempt


@pytest.mark.parametrize("value, fragment", [
    (None, "empty"),
    (b"", "empty"),
    (b"{nope", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"version":"19bb500","keys":[]}', "version"),
    (b'{"version":"00000000019BB500","keys":[]}', "version"),
    (b'{"version":"00000000019bb500","keys":"card:1"}', "keys"),
    (b'{"version":"00000000019bb500","keys":[1]}', "keys"),
    (b'{"version":"00000000019bb500","prefixes":[null]}', "prefixes"),
    (b'{"version":"00000000019bb500","commitTs":"soon"}', "commitTs"),
    (b'{"version":"00000000019bb500","ops":[]}', "ops"),
])
def test_sink_core_bad_records_are_named(value: bytes | None, fragment: str) -> None:
    with pytest.raises(BadRecord, match=fragment) as info:
        parse_record(value)
    assert info.value.code == "bad_record" and info.value.retriable is False


def test_sink_core_signature_is_verifiable_with_compare_digest() -> None:
    body = request_body(parse_record(OPS))
    headers = request_headers(SECRET, "00000000019bb500", body, NOW)
    assert headers[IDEMPOTENCY_HEADER] == "00000000019bb500"
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    # What a receiver does, written out without the sink's code:
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{headers[TIMESTAMP_HEADER]}.".encode() + body,
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, headers[SIGNATURE_HEADER])


@pytest.mark.parametrize("secret, timestamp, body, now, ok", [
    (SECRET, str(NOW), OPS, NOW, True),
    (SECRET, str(NOW), OPS, NOW + 300, True),          # at the tolerance
    (SECRET, str(NOW), OPS, NOW + 301, False),         # replayed too late
    (SECRET, str(NOW), OPS, NOW - 301, False),         # from the future
    ("other", str(NOW), OPS, NOW, False),              # wrong secret
    (SECRET, str(NOW), OPS + b" ", NOW, False),        # body changed
    (SECRET, str(NOW + 1), OPS, NOW, False),           # timestamp changed
    (SECRET, "-1", OPS, NOW, False),
    (SECRET, "", OPS, NOW, False),
    (SECRET, "１２", OPS, NOW, False),                 # non-ASCII digits
])
def test_sink_core_verify_table(secret: str, timestamp: str, body: bytes, now: int, ok: bool) -> None:
    signature = sign(SECRET, NOW, OPS)
    assert verify(secret, timestamp, body, signature, now) is ok


@pytest.mark.parametrize("status, outcome", [
    (200, "done"), (201, "done"), (202, "done"), (204, "done"), (299, "done"),
    (409, "done"),                                      # already applied
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (504, "retry"),
    (599, "retry"),
    (None, "retry"),                                    # no answer: refused, reset, timeout
    (400, "reject"), (401, "reject"), (403, "reject"), (404, "reject"), (405, "reject"), (410, "reject"),
    (413, "reject"), (422, "reject"), (499, "reject"),
    (100, "reject"), (301, "reject"), (302, "reject"), (307, "reject"), (600, "reject"),
])
def test_sink_core_classification_table(status: int | None, outcome: str) -> None:
    assert classify(status) == outcome


@pytest.mark.parametrize("value, ms", [
    (None, None), ("", None), ("3", 3000.0), (" 10 ", 10000.0), ("0", 0.0), ("-1", None), ("1.5", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_sink_core_retry_after(value: str | None, ms: float | None) -> None:
    assert retry_after_ms(value) == ms


@pytest.mark.parametrize("min_ms, max_ms", [(1, 1), (10, 1000), (500, 30_000), (100, 150), (7, 10**9)])
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999999])
def test_sink_core_backoff_stays_within_bounds(min_ms: int, max_ms: int, rand: float) -> None:
    backoff = Backoff(min_ms, max_ms)
    delays = [backoff.delay_ms(attempt, rand) for attempt in range(1, 200)]
    assert all(min_ms <= d <= max_ms for d in delays)
    assert delays == sorted(delays)  # same jitter: never shorter for a later attempt
    assert delays[-1] >= max_ms / 2


@pytest.mark.parametrize("attempt, rand, expected", [
    (1, 0.0, 100.0), (1, 0.999, 100.0),      # never below the minimum
    (2, 0.0, 100.0), (2, 1.0, 200.0),
    (3, 0.0, 200.0), (3, 0.5, 300.0), (3, 1.0, 400.0),
    (6, 1.0, 1000.0), (60, 0.0, 500.0), (10**6, 1.0, 1000.0),
])
def test_sink_core_backoff_schedule(attempt: int, rand: float, expected: float) -> None:
    assert Backoff(100, 1000).delay_ms(attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize("retry_after, expected", [(None, 100.0), (50.0, 100.0), (700.0, 700.0), (5000.0, 1000.0)])
def test_sink_core_backoff_honours_retry_after_within_max(retry_after: float | None, expected: float) -> None:
    assert Backoff(100, 1000).delay_ms(1, 0.0, retry_after) == expected


BACKOFF = Backoff(100, 1000)


@pytest.mark.parametrize("status, attempt, step", [
    (200, 1, Step("done")),
    (409, 3, Step("done")),
    (204, 8, Step("done")),
    (400, 1, Step("dead_letter", code="rejected")),      # permanent: at once, no retry
    (404, 7, Step("dead_letter", code="rejected")),
    (503, 1, Step("retry", delay_ms=100.0)),
    (None, 2, Step("retry", delay_ms=100.0)),
    (429, 4, Step("retry", delay_ms=400.0)),
    (503, 7, Step("retry", delay_ms=500.0)),        # capped at 1000, half of it with rand 0
    (503, 8, Step("dead_letter", code="exhausted")),     # max_attempts reached
    (None, 8, Step("dead_letter", code="exhausted")),
    (500, 9, Step("dead_letter", code="exhausted")),
])
def test_sink_core_decide_table(status: int | None, attempt: int, step: Step) -> None:
    assert decide(status, attempt, 8, BACKOFF, 0.0) == step


def test_sink_core_decide_never_retries_past_max_attempts() -> None:
    for max_attempts in range(1, 12):
        retries = 0
        attempt = 1
        while decide(503, attempt, max_attempts, BACKOFF, 0.5).action == "retry":
            retries += 1
            attempt += 1
        assert retries == max_attempts - 1


@pytest.mark.parametrize("version, last, done", [
    ("00000000019bb500", "", False),
    ("00000000019bb500", "00000000019bb400", False),
    ("00000000019bb500", "00000000019bb500", True),
    ("00000000019bb400", "00000000019bb500", True),
])
def test_sink_core_already_done(version: str, last: str, done: bool) -> None:
    assert already_done(version, last) is done


ENV = {"FRESHWIRE_SINK_URL": "http://127.0.0.1:3000/api/freshwire", "FRESHWIRE_SINK_SECRET": SECRET}


def test_sink_settings_defaults_and_flags_over_env() -> None:
    s = load_settings(["--max-attempts", "3", "--group", "g"], {**ENV, "FRESHWIRE_SINK_MAX_ATTEMPTS": "5"})
    assert s == Settings(url=ENV["FRESHWIRE_SINK_URL"], secret=SECRET, max_attempts=3, group="g")
    assert (s.bootstrap, s.topic, s.dlq_topic) == ("127.0.0.1:19092", "freshwire.invalidations", "freshwire.sink.dlq")
    assert SECRET not in repr(s)


@pytest.mark.parametrize("env, argv, named", [
    ({"FRESHWIRE_SINK_SECRET": SECRET}, [], "FRESHWIRE_SINK_URL"),
    ({"FRESHWIRE_SINK_URL": "http://x"}, [], "FRESHWIRE_SINK_SECRET"),
    ({**ENV, "FRESHWIRE_SINK_SECRET": ""}, [], "FRESHWIRE_SINK_SECRET"),
    (ENV, ["--url", "ftp://x"], "FRESHWIRE_SINK_URL"),
    (ENV, ["--max-attempts", "many"], "FRESHWIRE_SINK_MAX_ATTEMPTS"),
    (ENV, ["--max-attempts", "0"], "FRESHWIRE_SINK_MAX_ATTEMPTS"),
    (ENV, ["--backoff-min-ms", "0"], "FRESHWIRE_SINK_BACKOFF_MIN_MS"),
    (ENV, ["--backoff-min-ms", "10", "--backoff-max-ms", "5"], "FRESHWIRE_SINK_BACKOFF_MAX_MS"),
    (ENV, ["--timeout-ms", "0"], "FRESHWIRE_SINK_TIMEOUT_MS"),
])
def test_sink_settings_errors_name_the_setting(env: dict[str, str], argv: list[str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(argv, env)


def test_sink_core_ops_record_is_one_definition_for_writer_and_sink() -> None:
    """#16: the consumer writes the ops record and the sink reads and posts it through cdc/ops_record.py."""
    from cdc.effects import ops_record
    from cdc.model import Batch as Released

    released = Released(version="00000000019bb500", tx_id="966", commit_ts_ms=1795803066713, keys=("card:1",),
                        prefixes=("tenant:7:card:",), ops={"public.cards": {"u": 50000}}, degraded=True,
                        missing=(("public.documents", 1),))
    written = ops_record(released)
    batch = parse_record(written)
    assert (batch.degraded, dict(batch.missing), batch.prefixes) == (True, {"public.documents": 1}, ("tenant:7:card:",))
    assert request_body(batch) == written

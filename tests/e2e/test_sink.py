"""The cache-purge sink end to end: real writes -> Debezium -> cdc -> ops topic -> sink -> a real HTTP
receiver on 127.0.0.1 that checks the signature and dedups by Idempotency-Key."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from clients.sink.run import Sink
from clients.sink.settings import Settings
from connectors.stack_settings import StackSettings
from tests.e2e.helpers import new_board, new_card, write

OPS_TOPIC = "freshwire.invalidations"
DLQ_TOPIC = "freshwire.sink.dlq"
SECRET = "e2e-sink-secret"


@dataclass
class Seen:
    key: str
    body: dict[str, Any]
    signed: bool
    status: int


@dataclass
class Receiver:
    """A Next.js route handler stand-in: verify the HMAC, apply each Idempotency-Key once (409 after)."""

    fail_first: int = 0            # answer 503 to this many requests first
    lose_first_ack: bool = False   # ...but apply the very first one (its answer is "lost")
    always: int | None = None      # answer this status to everything
    requests: list[Seen] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, key: str, raw: bytes, timestamp: str, signature: str) -> int:
        expected = "sha256=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, signature) and abs(time.time() - int(timestamp or 0)) < 300
        with self.lock:
            n = len(self.requests)
            if not signed:
                status = 401
            elif self.always is not None:
                status = self.always
            elif n < self.fail_first:
                if self.lose_first_ack and n == 0:
                    self.applied.append(key)
                status = 503
            elif key in self.applied:
                status = 409
            else:
                self.applied.append(key)
                status = 200
            self.requests.append(Seen(key, json.loads(raw), signed, status))
        return status

    def of(self, board: int) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if f"board:{board}" in r.body["keys"]]

    def applied_of(self, board: int) -> list[str]:
        with self.lock:
            mine = {r.key for r in self.requests if f"board:{board}" in r.body["keys"]}
            return [k for k in self.applied if k in mine]


@contextmanager
def serving(receiver: Receiver) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.answer(self.headers.get("Idempotency-Key", ""), raw,
                                     self.headers.get("X-Freshwire-Timestamp", ""),
                                     self.headers.get("X-Freshwire-Signature", ""))
            reply = b"already applied" if status == 409 else b"ok" if status < 300 else b"nope"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/freshwire"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def running_sink(s: StackSettings, url: str, max_attempts: int = 8) -> Iterator[Sink]:
    """The sink's own loop in a thread, with a fresh consumer group (so it starts at the end)."""
    settings = Settings(url=url, secret=SECRET, bootstrap=s.kafka_bootstrap,
                        group=f"freshwire-sink-e2e-{uuid.uuid4().hex[:10]}", max_attempts=max_attempts,
                        backoff_min_ms=20, backoff_max_ms=200, timeout_ms=2000)
    stop = threading.Event()
    sink = Sink(settings, stop)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            sink.run()
        except BaseException as exc:
            failures.append(exc)
            raise

    thread = threading.Thread(target=run, name="sink", daemon=True)
    thread.start()
    try:
        assert sink.ready.wait(20) or failures, "the sink was not assigned its partition"
        assert not failures, failures
        yield sink
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive(), "the sink did not stop"
    assert not failures, failures


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def end_offset(topic: str, s: StackSettings) -> int:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-sink-probe"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        consumer.close()


def read(s: StackSettings, topic: str, start: int, want: Callable[[Message], bool], count: int) -> list[Message]:
    """`count` records of partition 0 from `start` that `want` accepts (a plain consumer, no group offsets)."""
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "e2e-sink-reader",
                         "enable.auto.commit": False})
    found: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, 0, start)])
        deadline = time.monotonic() + 20
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and want(msg):
                found.append(msg)
    finally:
        consumer.close()
    assert len(found) == count, f"{topic}: {len(found)} of {count} records"
    return found


def header_map(msg: Message) -> dict[str, str]:
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in pairs}


def about(board: int) -> Callable[[Message], bool]:
    return lambda msg: f"board:{board}" in json.loads(msg.value() or b"{}").get("keys", [])


def test_sink_delivers_every_batch_signed_and_in_order(stack_settings: StackSettings) -> None:
    s = stack_settings
    receiver = Receiver()
    with serving(receiver) as url, running_sink(s, url) as sink:
        start = end_offset(OPS_TOPIC, s)
        board = new_board(s)
        card = new_card(s, board)
        new_card(s, board)
        txid, inside, after = write(s, "UPDATE cards SET status = 'done' WHERE id = %s", (card,))
        ops = read(s, OPS_TOPIC, start, about(board), 4)
        expected = [(m.key() or b"").decode() for m in ops]
        wait_for(lambda: len(receiver.applied_of(board)) == 4, "4 batches delivered")
        mine = receiver.of(board)
        assert all(r.signed and r.status == 200 for r in mine)
        assert [r.key for r in mine] == expected              # one POST each, in the topic's order
        assert [r.body for r in mine] == [json.loads(m.value() or b"") for m in ops]
        assert all(r.key == r.body["version"] for r in mine)  # Idempotency-Key: the version
        update = next(r for r in mine if r.body["txId"] == txid)
        assert inside < update.key <= after
        assert set(update.body["keys"]) >= {f"card:{card}", f"board:{board}"}
        assert sink.retried == 0 and sink.dead_lettered == 0


def test_sink_retries_a_failing_receiver_and_applies_each_version_once(stack_settings: StackSettings) -> None:
    """503 for the first 3 requests (the first one applied, its answer lost): every batch ends applied
    once, the retry of the lost one is answered 409 and counts as delivered."""
    s = stack_settings
    receiver = Receiver(fail_first=3, lose_first_ack=True)
    with serving(receiver) as url, running_sink(s, url) as sink:
        start = end_offset(OPS_TOPIC, s)
        board = new_board(s)
        new_card(s, board)
        new_card(s, board)
        expected = [(m.key() or b"").decode() for m in read(s, OPS_TOPIC, start, about(board), 3)]
        wait_for(lambda: set(receiver.applied_of(board)) == set(expected), "3 versions applied")
        time.sleep(0.2)  # nothing more arrives for them
        applied, mine = receiver.applied_of(board), receiver.of(board)
        assert applied == expected                       # each version once, in order
        assert [r.status for r in mine][:4] == [503, 503, 503, 409]
        assert {r.key for r in mine[:4]} == {expected[0]}  # the same version until it is done
        assert [r.key for r in mine[4:]] == expected[1:]
        assert all(r.signed for r in mine)
        assert sink.retried >= 3 and sink.dead_lettered == 0


def test_sink_dead_letters_a_rejected_batch_and_moves_on(stack_settings: StackSettings) -> None:
    s = stack_settings
    receiver = Receiver(always=400)
    with serving(receiver) as url, running_sink(s, url) as sink:
        start, dlq_start = end_offset(OPS_TOPIC, s), end_offset(DLQ_TOPIC, s)  # the sink created the DLQ
        board = new_board(s)
        new_card(s, board)
        ops = read(s, OPS_TOPIC, start, about(board), 2)
        dead = read(s, DLQ_TOPIC, dlq_start, about(board), 2)
        wait_for(lambda: sink.dead_lettered >= 2, "both dead letters acknowledged")
        group = sink.settings.group
    for original, letter in zip(ops, dead, strict=True):
        assert letter.key() == original.key() and letter.value() == original.value()
        headers = header_map(letter)
        assert headers["freshwire.error.code"] == "rejected"
        assert headers["freshwire.error.message"].startswith("HTTP 400")
        assert headers["freshwire.sink.attempts"] == "1"            # permanent: never retried
        assert headers["freshwire.source.topic"] == OPS_TOPIC
        assert headers["freshwire.source.offset"] == str(original.offset())
    assert [r.key for r in receiver.of(board)] == [(m.key() or b"").decode() for m in ops]
    probe = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": group})
    try:
        committed = probe.committed([TopicPartition(OPS_TOPIC, 0)], timeout=10)[0].offset
    finally:
        probe.close()
    assert committed >= (ops[-1].offset() or 0) + 1  # dead-lettered records are committed: it moved on

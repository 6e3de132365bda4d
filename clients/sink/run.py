"""The sink's I/O loop: ops records in, one at a time and in order; signed POSTs out; the offset
committed only after the POST succeeded or the record was dead-lettered.

Delivery is at least once: a crash, a lost answer or a rebalance sends a batch again, always with
`Idempotency-Key: <version>`, so a receiver that remembers the keys it applied applies each once.
A stop (SIGTERM) lets the POST in hand finish; a batch still waiting for a retry is left uncommitted
and is sent again by the next run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from clients.sink.core import (
    Backoff,
    BadRecord,
    DeadLetterCode,
    already_done,
    decide,
    parse_record,
    request_body,
    request_headers,
    retry_after_ms,
)
from clients.sink.settings import Settings

log = logging.getLogger(__name__)

POLL_S = 0.1
ADMIN_TIMEOUT_S = 10.0
DLQ_FLUSH_S = 10.0
USER_AGENT = "freshwire-sink/0.1"
DETAIL_MAX = 500


def ensure_topic(bootstrap: str, topic: str) -> None:
    """Create the dead-letter topic with one partition if it does not exist yet."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    if topic in admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics:
        return
    future = admin.create_topics([NewTopic(topic, num_partitions=1)])[topic]
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
        log.info("created dead-letter topic %s", topic)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class Sink:
    """Consumes `settings.topic` as `settings.group` until `stop` is set; `run()` closes everything."""

    def __init__(self, settings: Settings, stop: threading.Event, *, http: httpx.Client | None = None,
                 rand: Callable[[], float] = random.random, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.stop = stop
        self.ready = threading.Event()  # set once the partitions are assigned and positioned
        self.backoff = Backoff(settings.backoff_min_ms, settings.backoff_max_ms)
        self.delivered = self.retried = self.dead_lettered = 0
        self._rand, self._clock = rand, clock
        self._last_done = ""
        self._start: list[TopicPartition] = []
        self._own_http = http is None
        self.http = http or httpx.Client(timeout=settings.timeout_ms / 1000, follow_redirects=False,
                                         headers={"User-Agent": USER_AGENT})
        self.consumer = Consumer({
            "bootstrap.servers": settings.bootstrap,
            "group.id": settings.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest",
            # One record may retry for a long time; the group must not evict us meanwhile.
            "max.poll.interval.ms": min(86_400_000, settings.max_record_ms + 60_000),
            "log_level": 4,
        })
        self.producer = Producer({
            "bootstrap.servers": settings.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "log_level": 3,
        })
        self._dlq_failures: list[str] = []

    # -- assignment: a group without a committed offset starts at the end, decided (and committed)
    # here rather than lazily, so nothing produced after `ready` is set can be skipped.
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._start = []
        for tp in consumer.committed(partitions, timeout=ADMIN_TIMEOUT_S):
            if tp.offset < 0:
                _low, high = consumer.get_watermark_offsets(tp, timeout=ADMIN_TIMEOUT_S)
                tp.offset = high
                self._start.append(tp)
        by_partition = {tp.partition: tp for tp in self._start}
        consumer.assign([by_partition.get(p.partition, p) for p in partitions])
        self.ready.clear()
        log.info("assigned %s, starting at %s", [p.partition for p in partitions],
                 {tp.partition: tp.offset for tp in self._start} or "the committed offsets")

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.ready.clear()
        log.info("revoked %s", [p.partition for p in partitions])

    def run(self) -> None:
        s = self.settings
        try:
            ensure_topic(s.bootstrap, s.dlq_topic)
            self.consumer.subscribe([s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            log.info("consuming %s as group %s, posting to %s", s.topic, s.group, s.url)
            while not self.stop.is_set():
                msg = self.consumer.poll(POLL_S)
                self._positioned()
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    log.warning("consume error: %s", err)
                    continue
                if not self.handle(msg):
                    break  # stopping with this record undone: it is not committed
                self._commit(msg.topic() or s.topic, msg.partition() or 0, (msg.offset() or 0) + 1)
        finally:
            self.close()

    def _positioned(self) -> None:
        if self._start:
            starts, self._start = self._start, []
            for tp in starts:
                self._commit(tp.topic, tp.partition, tp.offset)
        if not self.ready.is_set() and self.consumer.assignment():
            self.ready.set()

    def handle(self, msg: Message) -> bool:
        """Deliver or dead-letter one record; False if a stop left it undone."""
        try:
            batch = parse_record(msg.value())
        except BadRecord as exc:
            log.warning("dead-lettering %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            return self._dead_letter(msg, exc.code, str(exc), attempts=0)
        if already_done(batch.version, self._last_done):
            log.info("skipping version %s: at or below %s, already finished", batch.version, self._last_done)
            return True
        body = request_body(batch)
        attempt = 0
        while True:
            attempt += 1
            status, detail, retry_after = self._post(batch.version, body)
            step = decide(status, attempt, self.settings.max_attempts, self.backoff, self._rand(), retry_after)
            if step.action == "done":
                self.delivered += 1
                self._last_done = batch.version
                log.info("delivered version %s (tx %s, %s keys, %s prefixes) after %s attempt(s): %s",
                         batch.version, batch.tx_id, len(batch.keys), len(batch.prefixes), attempt, detail)
                return True
            if step.action == "dead_letter":
                code = step.code or "rejected"
                log.warning("dead-lettering version %s (%s) after %s attempt(s): %s",
                            batch.version, code, attempt, detail)
                if not self._dead_letter(msg, code, detail, attempts=attempt):
                    return False
                self._last_done = batch.version
                return True
            self.retried += 1
            log.warning("version %s attempt %s failed, retrying in %.0f ms: %s",
                        batch.version, attempt, step.delay_ms, detail)
            if self.stop.wait(step.delay_ms / 1000):
                log.info("stopping with version %s undelivered; the next run sends it again", batch.version)
                return False

    def _post(self, version: str, body: bytes) -> tuple[int | None, str, float | None]:
        """(status or None for no answer, a short description, Retry-After in ms)."""
        headers = request_headers(self.settings.secret, version, body, int(self._clock()))
        try:
            response = self.http.post(self.settings.url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # refused, reset, timed out: no answer
            return None, f"{type(exc).__name__}: {exc}"[:DETAIL_MAX], None
        detail = f"HTTP {response.status_code} {response.text.strip()}"[:DETAIL_MAX]
        return response.status_code, detail, retry_after_ms(response.headers.get("Retry-After"))

    def _on_dlq(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._dlq_failures.append(str(err))

    def _dead_letter(self, msg: Message, code: DeadLetterCode, detail: str, attempts: int) -> bool:
        """The original key and value, with the error in headers; True once Kafka acknowledged it."""
        headers: list[tuple[str, Any]] = [
            ("freshwire.error.code", code.encode()),
            ("freshwire.error.message", detail[:DETAIL_MAX].encode()),
            ("freshwire.sink.attempts", str(attempts).encode()),
            ("freshwire.source.topic", str(msg.topic()).encode()),
            ("freshwire.source.partition", str(msg.partition()).encode()),
            ("freshwire.source.offset", str(msg.offset()).encode()),
        ]
        attempt = 0
        while True:
            attempt += 1
            self._dlq_failures = []
            self.producer.produce(self.settings.dlq_topic, key=msg.key(), value=msg.value(), headers=headers,
                                  on_delivery=self._on_dlq)
            remaining = self.producer.flush(DLQ_FLUSH_S)
            if not remaining and not self._dlq_failures:
                self.dead_lettered += 1
                return True
            delay_ms = self.backoff.delay_ms(attempt, self._rand())
            log.warning("dead-letter produce failed (%s undelivered, %s), retrying in %.0f ms",
                        remaining, self._dlq_failures[:3], delay_ms)
            if self.stop.wait(delay_ms / 1000):
                return False

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        try:
            self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        except KafkaException as exc:  # e.g. revoked meanwhile: the new owner sends it again
            log.warning("commit of %s[%s]@%s failed: %s", topic, partition, offset, exc)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.flush(DLQ_FLUSH_S)
            if self._own_http:
                self.http.close()

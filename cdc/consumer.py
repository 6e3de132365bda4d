"""The consumer loop: Kafka records in, effects out, offsets committed only after the effects.

Order per chunk of records: decode and assemble (pure) -> dead letters -> Redis (versions, fan-out,
watermark) -> ops topic -> wait for Kafka acks -> commit the safe offset. Every effect is idempotent,
so a crash anywhere replays from the last commit and changes nothing twice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from cdc.assembler import Assembler, whole_tables
from cdc.connector_watch import ConnectorWatcher
from cdc.decode import decode
from cdc.effects import MAX_MESSAGE_BYTES, TRIM_BATCH, EffectError, KafkaOutputs, RedisRelease
from cdc.errors import DecodeError
from cdc.keyset import KeyLimits
from cdc.metrics import Metrics
from cdc.model import Batch
from cdc.ports import InputConsumer, Outputs, Release
from cdc.replay import ReplayPlan, replay_plan
from cdc.replicas import HoldPolicy, ReplicaWatcher, decide
from cdc.rules import Rules
from cdc.settings import Settings
from cdc.slot import SlotMonitor
from contract.versions import lsn_of_version

log = logging.getLogger(__name__)

LAG_REFRESH_S = 1.0
MAX_TRIM_CALLS = 100  # per interval: at most 1 M keys dropped, the rest at the next one


def consumer_config(settings: Settings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": settings.cdc_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # A long poll: the broker answers as soon as a record is appended (fetch.min.bytes 1), so this
        # only sets how often an idle consumer asks again (bench/idle.py, docs/tuning.md).
        "fetch.wait.max.ms": 1000,
        "socket.nagle.disable": True,
        "partition.assignment.strategy": "cooperative-sticky",
        # A crashed consumer's partition moves to its restart (or the hot spare) after this,
        # not after librdkafka's default 45 s: found by the chaos harness.
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        # Fetches always return at least one whole record, so a record as large as the topic allows
        # is read in one go; this only bounds how much one fetch brings in.
        "fetch.max.bytes": MAX_MESSAGE_BYTES * 2,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "log_level": 4,
    }


class Pipeline:
    """Consumes `settings.cdc_topic` until `stop` is set; `run()` closes everything.

    `consumer`, `redis` and `outputs` default to the real ones built from `settings` (only those not
    given are built: building them connects). An injected consumer reports its own commit results.
    """

    def __init__(self, settings: Settings, rules: Rules, metrics: Metrics, stop: threading.Event, *,
                 consumer: InputConsumer | None = None, redis: Release | None = None,
                 outputs: Outputs | None = None) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.stop = stop
        self.assemblers: dict[int, Assembler] = {}
        self.assigned: set[int] = set()  # partitions this process consumes: 0 on a hot spare
        self.limits = KeyLimits(settings.cdc_max_tx_keys, settings.cdc_max_tx_key_bytes, settings.cdc_max_tx_prefixes,
                                settings.cdc_max_payload_bytes, settings.cdc_max_tx_payload_bytes)
        self.redis: Release = redis if redis is not None else RedisRelease(
            settings.redis_url, track_changes=settings.retention_on, buckets=settings.redis_buckets,
            wait_replicas=settings.redis_wait_replicas, wait_timeout_ms=settings.redis_wait_timeout_ms)
        self.outputs: Outputs = (outputs if outputs is not None else
                                 KafkaOutputs(settings.kafka_bootstrap, settings.ops_topic, settings.dlq_topic))
        self.consumer: InputConsumer = (consumer if consumer is not None else
                                        Consumer({**consumer_config(settings), "on_commit": self._on_commit}))
        self._last_lag_check = 0.0
        self._done: dict[int, int] = {}  # partition -> a safe offset whose effects are done, to commit
        self._last_commit = -math.inf  # monotonic; the first chunk commits at once
        self.replicas = ReplicaWatcher(settings.replicas, metrics) if settings.replicas else None
        self.slot = SlotMonitor(settings.primary_dsn, settings.slot_name, metrics) if settings.primary_dsn else None
        self._last_slot_check = 0.0
        self._last_trim = 0.0
        self.connector = (ConnectorWatcher(settings.connect_url, settings.connector_name, settings.connect_poll_s,
                                           metrics, stop) if settings.connect_url else None)

    # -- rebalance: the stream restarts from the committed offset, so forget what is in hand
    def _on_assign(self, consumer: InputConsumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update(p.partition for p in partitions)
        self.metrics.assigned.set(len(self.assigned))
        watermark = self._released_watermark()
        try:
            positions = {tp.partition: tp for tp in consumer.committed(partitions, timeout=10)}
        except KafkaException as exc:
            log.warning("could not read committed offsets on assignment: %s", exc)
            positions = {}
        for p in partitions:
            committed = positions.get(p.partition)
            log_start = None if committed is None else self._log_start(consumer, committed)
            offset = None if committed is None else committed.offset
            plan = replay_plan(offset, log_start, watermark, self.outputs.ops_version)
            self._report_plan(p.partition, offset, log_start, plan)
            assembler = Assembler(self.rules, last_version=plan.skip_through, limits=self.limits)
            assembler.flush_next = plan.flush
            self.assemblers[p.partition] = assembler
        log.info("assigned %s", [p.partition for p in partitions])

    def _log_start(self, consumer: InputConsumer, partition: TopicPartition) -> int | None:
        try:
            low, _high = consumer.get_watermark_offsets(partition, timeout=10)
        except KafkaException as exc:
            log.warning("could not read the log start of partition %s: %s", partition.partition, exc)
            return None
        return low

    def _report_plan(self, partition: int, committed: int | None, log_start: int | None, plan: ReplayPlan) -> None:
        if "store_emptied" in plan.reasons:
            # Redis lost the version store behind our back: resuming clients would be told nothing
            # changed. Replay from the committed offset, and the next release invalidates every key.
            log.error("partition %s: committed offset %s but Redis holds no watermark (Redis was emptied); "
                      "flushing every key with the next release", partition, committed)
            self.metrics.store_resets.inc()
        if "retention_overrun" in plan.reasons:
            # Records between the committed offset and the topic's start expired unread: their
            # invalidations are gone, so the next release invalidates every key (prefix "").
            log.error("partition %s: committed offset %s is below the log start %s (retention overrun); "
                      "flushing every key with the next release", partition, committed, log_start)
            self.metrics.retention_overruns.inc()

    def _released_watermark(self) -> str | None:
        """Redis' watermark ("" when it holds none); None when Redis did not answer (then nothing is
        claimed: the replay goes through Redis, whose script ignores what it already holds)."""
        try:
            return self.redis.watermark() or ""
        except EffectError as exc:
            log.warning("could not read the released watermark (replaying through Redis): %s", exc)
            return None

    def _on_revoke(self, _consumer: InputConsumer, partitions: list[TopicPartition]) -> None:
        self._commit_now()  # what this process has done, before the partitions leave it
        for p in partitions:
            self.assemblers.pop(p.partition, None)
            self.assigned.discard(p.partition)
        self.metrics.assigned.set(len(self.assigned))
        log.info("revoked %s", [p.partition for p in partitions])

    def run(self) -> None:
        self.consumer.subscribe([self.settings.cdc_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.metrics.set_effects_ok(True)
        if self.connector is not None:
            self.connector.start()
        log.info("consuming %s as group %s", self.settings.cdc_topic, self.settings.cdc_group)
        try:
            while not self.stop.is_set():
                msgs = self._next_chunk()
                if msgs:
                    self._process(msgs, time.time() * 1000)
                else:
                    self._commit_now()  # quiet: nothing is left uncommitted for long
                self._refresh_lag()
                self._watch_slot()
                self._trim_versions()
        finally:
            self.close()

    def _next_chunk(self) -> list[Message]:
        """Wait for the first record only, then take what is already there: consume(n, timeout) would
        wait the whole timeout for n records, adding up to that much latency to every quiet batch."""
        first = self.consumer.poll(self.settings.cdc_poll_timeout_ms / 1000)
        if first is None:
            return []
        return [first, *self.consumer.consume(self.settings.cdc_max_records - 1, 0)]

    def _process(self, msgs: list[Message], received_ms: float) -> None:
        batches: list[Batch] = []
        touched: set[int] = set()
        records = 0
        skipped = self._skipped_replays()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            partition, offset = msg.partition() or 0, msg.offset() or 0
            assembler = self.assemblers.get(partition)
            if assembler is None:
                continue  # revoked while in hand
            records += 1
            touched.add(partition)
            try:
                record = decode(msg.key(), msg.value())
            except Exception as exc:  # a record must never stop the pipeline
                if not isinstance(exc, DecodeError):
                    log.exception("decoder failed on %s@%s", msg.partition(), msg.offset())
                    exc = DecodeError("decoder_failed", repr(exc)[:500])
                self.metrics.dlq.labels(exc.code).inc()
                log.warning("dead-lettering %s[%s]@%s: %s", msg.topic(), msg.partition(), msg.offset(), exc)
                self.outputs.dead_letter(msg, exc)
                assembler.skip(offset)
                continue
            batch = assembler.feed(record, offset)
            if batch is not None:
                batches.append(replace(batch, arrival_ms=(float(msg.timestamp()[1]), received_ms)))
        self.metrics.records_in.inc(records)
        self.metrics.replays.inc(self._skipped_replays() - skipped)
        for p in touched:
            self._refuse_without_transactions(self.assemblers[p])
        self._report(batches)
        self._apply(batches)
        self._commit(touched)

    def _skipped_replays(self) -> int:
        """Batches the assemblers skipped as already released (rebalances happen only in poll, so the
        assemblers do not change during a chunk)."""
        return sum(a.skipped_replays for a in self.assemblers.values())

    def _refuse_without_transactions(self, assembler: Assembler) -> None:
        if assembler.without_transaction and self.metrics.config_error is None:
            error = ("changes arrive without transaction metadata: set provide.transaction.metadata=true on the "
                     "Debezium connector (connectors/freshwire-postgres.json); without it versions are not in "
                     "commit order and invalidations can be lost")
            log.error("%s", error)
            self.metrics.set_config_error(error)

    def _report(self, batches: list[Batch]) -> None:
        """Degraded batches and missing events: counted, logged, in /readyz, and noted in the DLQ."""
        for b in batches:
            if b.data:
                self.metrics.payload_keys.inc(len(b.data))
            for reason, n in b.data_dropped.items():
                self.metrics.payload_dropped.labels(reason).inc(n)
            if b.degraded:
                self.metrics.degraded.inc()
                self.metrics.detail["last_degraded"] = {"version": b.version, "txId": b.tx_id,
                                                        "keys": len(b.keys), "prefixes": len(b.prefixes)}
                log.info("transaction %s at %s too large to carry key by key: %s key(s) and %s prefix(es) instead",
                         b.tx_id, b.version, len(b.keys), len(b.prefixes))
            for table, n in b.missing:
                self.metrics.missing_events.labels(table).inc(n)
                self.metrics.detail["last_missing"] = {"version": b.version, "txId": b.tx_id, "table": table,
                                                       "events": n}
                log.warning("transaction %s at %s: %s event(s) of %s never reached the stream (dropped by "
                            "Connect or dead-lettered): the table is invalidated whole", b.tx_id, b.version, n, table)
                self.outputs.note("missing_events", f"transaction {b.tx_id} at {b.version}: {n} event(s) of "
                                  f"{table} missing; invalidated as a truncate of {table}", b.version.encode())

    def _apply(self, batches: list[Batch]) -> None:
        if self.replicas is None:
            self._release_now(batches)  # no replica configured: no added latency
        else:
            self._release_gated(batches, self.replicas)
        self._retrying("kafka", lambda: self._append_ops(batches))
        now_ms = time.time() * 1000
        for b in batches:
            self.metrics.commit_to_publish.observe(max(0.0, (now_ms - b.commit_ts_ms) / 1000))
            self.metrics.keys_out.inc(len(b.keys))
        if batches:
            self.metrics.batches_out.inc(len(batches))
            self.metrics.last_version.set(lsn_of_version(batches[-1].version))

    def _release_gated(self, batches: list[Batch], replicas: ReplicaWatcher) -> None:
        """Release in commit order, each batch once every replica has replayed its commit."""
        s = self.settings
        pending, since = batches, time.monotonic()
        policy: HoldPolicy = "hold" if s.hold_policy == "hold" else "release"
        while pending:
            held = time.monotonic() - since
            decision = decide(pending, replicas.replayed(), held, s.max_hold_ms / 1000, policy)
            if decision.release == 0:
                if self.stop.wait(s.replica_poll_ms / 1000):
                    raise EffectError("stopping while batches wait for the replicas")
                continue
            ready, pending = pending[:decision.release], pending[decision.release:]
            if decision.stale:
                self.metrics.released_stale.inc()
                log.warning("released %s after %.2fs without every replica having it", ready[0].version, held)
                ready = [replace(b, lapse=b.lapse or "replica_lag") for b in ready]
            self._release_now(ready)
            waited = time.monotonic() - since
            for _ in ready:
                self.metrics.hold.observe(waited)

    def _release_now(self, batches: list[Batch]) -> None:
        try:
            self._retrying("redis", lambda: self.redis.release(batches), permanent_raises=True)
        except EffectError as exc:
            if exc.retriable:
                raise
            # Redis refuses this call itself: release each transaction's tables whole (a few prefixes)
            # instead, and keep retrying that; never skip a release.
            log.error("redis refused the release for good (%s): releasing %s batch(es) as whole tables",
                      exc, len(batches))
            self.metrics.effect_refusals.labels("redis").inc()
            smaller = [whole_tables(b, self.rules) for b in batches]
            self._retrying("redis", lambda: self.redis.release(smaller))

    def _append_ops(self, batches: list[Batch]) -> None:
        self.outputs.append_ops(batches)
        self.outputs.flush()
        for what, _why in self.outputs.refused:
            self.metrics.effect_refusals.labels("kafka").inc()
            self.metrics.detail["last_refused"] = what
        self.outputs.refused.clear()

    def _retrying(self, effect: str, action: Callable[[], Any], permanent_raises: bool = False) -> None:
        delay = 0.05
        while True:
            try:
                action()
                self.metrics.set_effects_ok(True)
                return
            except EffectError as exc:
                if permanent_raises and not exc.retriable:
                    raise
                self.metrics.set_effects_ok(False)
                self.metrics.retries.labels(effect).inc()
                log.warning("%s effect failed, retrying in %.2fs: %s", effect, delay, exc)
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, self.settings.cdc_retry_max_s)

    def _commit(self, partitions: set[int]) -> None:
        """After a chunk's effects: commit now, or at most FRESHWIRE_CDC_COMMIT_INTERVAL_MS later (the
        next chunk past it, a quiet poll, a revocation or the close). Each commit is an append to
        __consumer_offsets; one per chunk was a large share of the broker's CPU at 1k tx/s. A commit
        left for later only means a longer, harmless replay after a crash: every effect is idempotent.

        The offsets are taken here, once the effects are done: an assembler's safe offset moves as a
        chunk is read, so a commit made later (a close after a failed chunk) must not read it again."""
        for p in partitions:
            assembler = self.assemblers.get(p)
            if assembler is not None and assembler.safe_offset is not None:
                self._done[p] = assembler.safe_offset
        if (time.monotonic() - self._last_commit) * 1000 >= self.settings.cdc_commit_interval_ms:
            self._commit_now()

    def _commit_now(self) -> None:
        done = {p: offset for p, offset in self._done.items() if p in self.assemblers}  # still assigned
        self._done = {}
        if not done:
            return
        self._last_commit = time.monotonic()
        offsets = [TopicPartition(self.settings.cdc_topic, p, offset) for p, offset in done.items()]
        try:
            # Asynchronous: the effects are done, so the commit needs no wait (a sync one cost ~15 % of
            # the loop at 1k tx/s). One lost or reordered commit only means a harmless replay.
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            for p, offset in done.items():  # tried again at the next chance, unless a newer one is done
                self._done.setdefault(p, offset)
            # E.g. UNKNOWN_MEMBER_ID after a broker restart: the group is rejoined by the next poll,
            # and whatever was not committed is replayed, which the effects make harmless.
            self.metrics.retries.labels("commit").inc()
            log.warning("offset commit failed (replayed after the rejoin, idempotently): %s", exc)

    def _on_commit(self, err: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self.metrics.retries.labels("commit").inc()
            log.warning("offset commit failed (replayed after the rejoin, idempotently): %s", err)

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < LAG_REFRESH_S:
            return
        self._last_lag_check = now
        try:
            self.metrics.consumer_lag.set(self._lag())
        except KafkaException as exc:
            log.warning("consumer lag unavailable: %s", exc)

    def _lag(self) -> int:
        lag = 0
        for p in self.assemblers:
            tp = TopicPartition(self.settings.cdc_topic, p)
            _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            pos = self.consumer.position([tp])[0].offset
            if high >= 0 and pos != OFFSET_INVALID and pos >= 0:
                lag += max(0, high - pos)
        return lag

    def _trim_versions(self) -> None:
        """The retention horizon: versions of keys changed before it are dropped (bounded calls)."""
        now = time.monotonic()
        s = self.settings
        if not s.retention_on or now - self._last_trim < s.trim_interval_s:
            return
        self._last_trim = now
        cutoff_ms = int(time.time() * 1000 - s.version_retention_s * 1000) if s.version_retention_s > 0 else -1
        try:
            for _ in range(MAX_TRIM_CALLS):
                dropped = self.redis.trim(cutoff_ms, s.version_max_keys)
                self.metrics.versions_trimmed.inc(dropped)
                if dropped < TRIM_BATCH:
                    break
            size, horizon = self.redis.store_size()
        except EffectError as exc:
            log.warning("could not trim the version store (retried at the next interval): %s", exc)
            return
        self.metrics.version_store_keys.set(size)
        if horizon:
            self.metrics.version_horizon.set(lsn_of_version(horizon))

    def _watch_slot(self) -> None:
        now = time.monotonic()
        if self.slot is None or now - self._last_slot_check < self.settings.slot_poll_s:
            return
        self._last_slot_check = now
        self.metrics.detail["slot_state"] = self.slot.poll()
        self.metrics.set_effects_ok(self.metrics.effects_ok)

    def close(self) -> None:
        try:
            try:
                self._commit_now()
            except Exception:  # closing anyway: what is not committed is replayed, harmlessly
                log.exception("final offset commit failed")
            self.consumer.close()
            if self.replicas is not None:
                self.replicas.close()
            if self.slot is not None:
                self.slot.close()
        finally:
            self.outputs.close()
            self.redis.close()

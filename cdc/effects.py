"""The consumer's effects, each safe to repeat: Redis versions + fan-out, the ops topic, the DLQ."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterError

from cdc.decode import MAX_RECORD_BYTES
from cdc.errors import DecodeError
from cdc.model import Batch
from contract.ops_record import OpsRecord, encode
from contract.redis_buckets import (
    LAYOUT,
    Layout,
    LayoutError,
    ScriptCall,
    cluster_nodes,
    layout_value,
    parse_layout_value,
    release_calls,
)
from contract.redis_health import refusal
from contract.redis_layout import (
    CHANGED,
    HORIZON,
    PREFIXES,
    RELEASE_LUA,
    TRIM_LUA,
    TX_TTL_S,
    VERSIONS,
    WATERMARK,
    hops_arg,
    release_args,
    tx_key,
)
from contract.versions import is_version

log = logging.getLogger(__name__)

RECOVER_TIMEOUT_S = 10.0
TRIM_BATCH = 10_000  # keys dropped per trim call: one call never blocks Redis for long


class EffectError(RuntimeError):
    """An effect did not complete; the batch is retried (all effects are idempotent).

    `retriable` False: the same call will fail again (Redis refused the script call itself); the
    consumer then retries the batch in its smallest form (cdc.assembler.whole_tables) instead.
    """

    def __init__(self, message: str, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


# Redis errors that go away by themselves: memory freed, a script finished, a replica promoted, a
# cluster slot moved, data loading after a restart. Any other reply error repeats for the same call.
TRANSIENT_REPLY = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK",
                   "NOREPLICAS", "NOSCRIPT")


def _redis_error(exc: redis.RedisError) -> EffectError:
    permanent = (isinstance(exc, redis.ResponseError) and not isinstance(exc, ClusterError)
                 and not str(exc).startswith(TRANSIENT_REPLY))
    return EffectError(f"redis: {exc}", retriable=not permanent)


def _cluster_client(nodes: list[tuple[str, int]]) -> RedisCluster:
    seeds = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=seeds, socket_timeout=5, socket_connect_timeout=2)


class RedisRelease:
    """Advance versions only forward and publish what advanced: one atomic script call per batch on one
    bucket; with several (a Redis Cluster, contract/redis_buckets.py) one call per bucket touched, then
    the control call. With `wait_replicas`, every release is acknowledged by that many replicas of each
    master (WAIT) before `release` returns, so before the consumer commits its offset."""

    def __init__(self, url: str, track_changes: bool = False, buckets: int = 1, wait_replicas: int = 0,
                 wait_timeout_ms: int = 500) -> None:
        self.layout = Layout(buckets)
        nodes = cluster_nodes(url)
        self._cluster = nodes is not None
        self._seeds = nodes
        self._conn: Any = (_cluster_client(nodes) if nodes is not None else
                           redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2))
        self._script = self._conn.register_script(RELEASE_LUA)
        self._trim = self._conn.register_script(TRIM_LUA)
        self._track = track_changes
        # With a retention horizon each advanced key's commit time is recorded, so it can be trimmed.
        self._keys_extra = [CHANGED] if track_changes else []
        self._wait = (wait_replicas, wait_timeout_ms)
        self._layout_checked = False

    def _check_layout(self) -> None:
        """Record the bucket count in the store, or refuse one written with another count: gateways
        read it from there, and versions written in other buckets would not be found."""
        if self._layout_checked:
            return
        wanted = layout_value(self.layout)
        if not self._redis.set(LAYOUT, wanted, nx=True):
            found = parse_layout_value(self._redis.get(LAYOUT))
            if found != self.layout:
                raise LayoutError(f"the version store was written with {found.buckets} bucket(s) ({LAYOUT}); this "
                                  f"consumer has FRESHWIRE_REDIS_BUCKETS={self.layout.buckets}: set it back, or "
                                  "empty the store and let the consumer replay (docs/scaling.md)")
        elif self.layout.spread and self._redis.exists(WATERMARK):
            self._redis.delete(LAYOUT)
            raise LayoutError("the version store was written with 1 bucket; this consumer has "
                              f"FRESHWIRE_REDIS_BUCKETS={self.layout.buckets} (docs/scaling.md)")
        self._layout_checked = True

    def release(self, batches: Sequence[Batch]) -> int:
        """Returns how many keys advanced in all; raises EffectError if Redis did not answer."""
        if not batches:
            return 0
        try:
            self._check_layout()
        except LayoutError as exc:
            raise EffectError(str(exc)) from exc
        try:
            if self.layout.spread:
                return self._release_spread(batches)
            pipe = self._redis.pipeline(transaction=False)
            publish_ms = time.time() * 1000
            for b in batches:
                hops = hops_arg(*b.arrival_ms, publish_ms) if b.arrival_ms[1] else ""
                tx = b.token_tx_id  # no marker for snapshot rows: no write token can name them
                self._script(keys=[VERSIONS, PREFIXES, WATERMARK, tx_key(tx), *self._keys_extra],
                             args=release_args(b.version, b.commit_ts_ms, b.keys, b.prefixes, tx, hops=hops,
                                               lapse=b.lapse, data=b.data),
                             client=pipe)
            return sum(self._execute(pipe))
        except redis.RedisError as exc:
            self._forget_slots()
            raise _redis_error(exc) from exc

    @property
    def _redis(self) -> Any:
        if self._conn is None:
            self._conn = _cluster_client(self._seeds or [])
        return self._conn

    def _forget_slots(self) -> None:
        """After a failed call on a cluster, the next one starts from a fresh client and slot map: a
        pipeline's client keeps sending to a master that died until its map is rebuilt."""
        if self._seeds is not None and self._conn is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._conn.close()
            self._conn = None

    def _release_spread(self, batches: Sequence[Batch]) -> int:
        # Parts first, then the controls: the watermark and the tx markers never run ahead of the versions.
        publish_ms = time.time() * 1000
        parts: list[ScriptCall] = []
        controls: list[ScriptCall] = []
        for b in batches:
            hops = hops_arg(*b.arrival_ms, publish_ms) if b.arrival_ms[1] else ""
            calls, control = release_calls(self.layout, b.version, b.commit_ts_ms, b.keys, b.prefixes,
                                           b.token_tx_id, TX_TTL_S, hops, b.lapse, self._track, b.data)
            parts.extend(calls)
            controls.append(control)
        advanced = sum(self._run_by_node(parts))
        self._run_by_node(controls)
        return advanced

    def _run_by_node(self, calls: list[ScriptCall]) -> list[int]:
        """The calls, in order within each node, one pipeline per node (EVAL: cluster pipelines refuse
        EVALSHA). A node's pipeline is one connection, so its WAIT covers exactly its own writes."""
        by_node: dict[Any, list[ScriptCall]] = {}
        for call in calls:
            node = self._redis.get_node_from_key(call.keys[0]) if self._cluster else None
            by_node.setdefault(node, []).append(call)
        replies: list[int] = []
        for node, node_calls in by_node.items():
            client = self._redis.get_redis_connection(node) if node is not None else self._redis
            pipe = client.pipeline(transaction=False)
            for call in node_calls:
                pipe.execute_command("EVAL", call.script, len(call.keys), *call.keys, *call.args)
            replies.extend(self._execute(pipe))
        return replies

    def _execute(self, pipe: Any) -> list[int]:
        """Run a pipeline of one node; with `wait_replicas`, its last command is WAIT, on the same
        connection as the writes (WAIT counts the replicas holding this connection's writes)."""
        replicas, timeout_ms = self._wait
        if replicas > 0:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        replies = [int(n) for n in pipe.execute()]
        if replicas > 0:
            acks = replies.pop()
            if acks < replicas:
                raise EffectError(f"redis: WAIT {replicas} got {acks} replica acknowledgement(s) within {timeout_ms} "
                                  "ms; the release is retried")
        return replies

    def trim(self, cutoff_ms: int, max_keys: int, batch: int = TRIM_BATCH) -> int:
        """Drop the versions of keys last changed at or before `cutoff_ms` (or the oldest past `max_keys`),
        raising the horizon; returns how many went. Raises EffectError if Redis did not answer."""
        try:
            if not self.layout.spread:
                return int(self._trim(keys=[VERSIONS, CHANGED, HORIZON], args=[cutoff_ms, max_keys, batch]))
            per_bucket = -(-max_keys // self.layout.buckets) if max_keys else 0
            return sum(int(self._redis.eval(TRIM_LUA, 3, self.layout.versions(b), self.layout.changed(b),
                                            self.layout.horizon(b), cutoff_ms, per_bucket, batch))
                       for b in range(self.layout.buckets))
        except redis.RedisError as exc:
            self._forget_slots()
            raise _redis_error(exc) from exc

    def store_size(self) -> tuple[int, str | None]:
        """(keys holding a version, the newest horizon of any bucket) for the metrics."""
        try:
            buckets = range(self.layout.buckets)
            sizes = [self._redis.hlen(self.layout.versions(b)) for b in buckets]
            horizons = [h.decode() for b in buckets if isinstance(h := self._redis.get(self.layout.horizon(b)), bytes)]
        except redis.RedisError as exc:
            self._forget_slots()
            raise _redis_error(exc) from exc
        return sum(int(n) for n in sizes), max(horizons, default=None)

    def refusal(self) -> str | None:
        """Why this Redis cannot keep the version store (contract/redis_health.py); None if it can or is down."""
        try:
            self._check_layout()
        except LayoutError as exc:
            return str(exc)
        except redis.RedisError:
            return None
        try:
            if self._cluster:  # every primary must keep its share
                nodes = [self._redis.get_redis_connection(n) for n in self._redis.get_primaries()]
                return next((r for n in nodes if (r := refusal(n, check_ttls=False))), None)
            return refusal(self._redis)
        except redis.RedisError:
            return None  # not reachable yet: the effects retry, and the next start checks again

    def watermark(self) -> str | None:
        """The last released version; raises EffectError if Redis did not answer."""
        try:
            value = self._redis.get(WATERMARK)
        except redis.RedisError as exc:
            self._forget_slots()
            raise EffectError(f"redis: {exc}") from exc
        return value.decode() if isinstance(value, bytes) else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def ops_record(batch: Batch) -> bytes:
    return encode(OpsRecord(batch.version, batch.tx_id, batch.commit_ts_ms, batch.keys, batch.prefixes,
                           batch.ops, batch.degraded, dict(batch.missing)))


# Broker, topics, producers and consumers share one record size limit (docs/cdc.md, "Limits").
MAX_MESSAGE_BYTES = MAX_RECORD_BYTES


def last_ops_version(bootstrap: str, topic: str) -> str:
    """The version of the last record in the (single-partition) ops topic, "" if none.

    Batches at or below it were already appended before a crash, so they are not appended again.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "freshwire-ops-recovery",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        meta = consumer.list_topics(topic, timeout=RECOVER_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return ""
        best = ""
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=RECOVER_TIMEOUT_S)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, partition, high - 1)])
            msg = consumer.poll(RECOVER_TIMEOUT_S)
            value = msg.value() if msg is not None and msg.error() is None else None
            if value:
                version = json.loads(value).get("version", "")
                if is_version(version) and version > best:
                    best = version
        return best
    finally:
        consumer.close()


class KafkaOutputs:
    """The ops topic (one record per released transaction) and the dead-letter topic."""

    def __init__(self, bootstrap: str, ops_topic: str, dlq_topic: str) -> None:
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "socket.nagle.disable": True,
            "message.max.bytes": MAX_MESSAGE_BYTES + 64 * 1024,  # room for the headers around the largest record
            "log_level": 3,
        })
        self._ops_topic = ops_topic
        self._dlq_topic = dlq_topic
        self.ops_version = last_ops_version(bootstrap, ops_topic)
        self._produced = self.ops_version  # produced, maybe not yet acknowledged
        self._failures: list[str] = []
        # Records Kafka refused for good (too large for the topic): dead-lettered without their value.
        self.refused: list[tuple[str, str]] = []  # (what, why)

    def _on_ops(self, err: KafkaError | None, msg: Message) -> None:
        version = (msg.key() or b"").decode()
        if err is not None and (err.retriable() or not version):
            self._failures.append(str(err))
            self._produced = self.ops_version  # produce again from the last acknowledged one
            return
        if err is not None:
            self._refuse(f"ops record {version}", str(err), msg.key())
        if version > self.ops_version:
            self.ops_version = version

    def _on_dlq(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if err.retriable():
            # Produced again, and the flush fails so the offset is not committed past it until it lands:
            # a dead letter is never lost to a broker that was away for longer than the producer waits.
            self._failures.append(str(err))
            self._producer.produce(self._dlq_topic, key=msg.key(), value=msg.value(), headers=msg.headers(),
                                   on_delivery=self._on_dlq)
        elif msg.value() is not None:  # too large for the DLQ: keep the headers, which say where it is
            self._producer.produce(self._dlq_topic, key=msg.key(), value=None,
                                   headers=[*(msg.headers() or []), ("freshwire.value.dropped", str(err).encode())],
                                   on_delivery=self._on_dlq)
        else:
            log.error("dead letter refused for good without a value (%s); headers: %s", err, msg.headers())

    def _refuse(self, what: str, why: str, key: bytes | None) -> None:
        log.error("kafka refused %s for good (%s): dead-lettered as a note, the stream goes on", what, why)
        self.refused.append((what, why))
        self.note("refused", f"{what}: {why}", key)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, on_delivery: Any,
                 headers: list[tuple[str, Any]] | None = None) -> None:
        """produce(), waiting while the local queue is full; a record over the size limit raises
        KafkaException(MSG_SIZE_TOO_LARGE) here, which the caller turns into a note."""
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)

    def append_ops(self, batches: Sequence[Batch]) -> None:
        for b in batches:
            if b.empty or b.version <= self._produced:
                continue
            self._produced = b.version
            try:
                self._produce(self._ops_topic, b.version.encode(), ops_record(b), self._on_ops)
            except KafkaException as exc:
                self._refuse(f"ops record {b.version}", str(exc), b.version.encode())
                self.ops_version = max(self.ops_version, b.version)

    def note(self, code: str, message: str, key: bytes | None = None) -> None:
        """A dead letter that carries no record, only what happened (a refused output, missing events)."""
        headers: list[tuple[str, Any]] = [("freshwire.error.code", code.encode()),
                                          ("freshwire.error.message", message[:1000].encode())]
        self._produce(self._dlq_topic, key, None, self._on_dlq, headers)

    def dead_letter(self, msg: Message, error: DecodeError) -> None:
        headers: list[tuple[str, Any]] = [
            ("freshwire.error.code", error.code.encode()),
            ("freshwire.error.message", error.message[:1000].encode()),
            ("freshwire.source.topic", str(msg.topic()).encode()),
            ("freshwire.source.partition", str(msg.partition()).encode()),
            ("freshwire.source.offset", str(msg.offset()).encode()),
        ]
        try:
            self._produce(self._dlq_topic, msg.key(), msg.value(), self._on_dlq, headers)
        except KafkaException as exc:
            self._produce(self._dlq_topic, msg.key(), None, self._on_dlq,
                          [*headers, ("freshwire.value.dropped", str(exc).encode())])

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything produced is acknowledged; raises EffectError otherwise."""
        try:
            remaining = self._producer.flush(timeout_s)
        except KafkaException as exc:
            raise EffectError(f"kafka: {exc}") from exc
        failures, self._failures = self._failures, []
        if remaining or failures:
            raise EffectError(f"kafka: {remaining} undelivered, failures: {failures[:3]}")

    def close(self) -> None:
        self._producer.flush(10)

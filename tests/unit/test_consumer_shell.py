"""cdc.consumer.Pipeline without the stack: in-process fakes of the Kafka consumer, the Redis release
and the Kafka outputs (cdc/ports.py), fed with the real Debezium records of the stack capture.

Every fake writes what it does to one shared list, `effects`, so a test reads the order of the
effects and the commit as it happened."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest
from confluent_kafka import Message, TopicPartition
from debezium_json import DEMO_RULES, Captured, stack_capture

from cdc.consumer import Pipeline
from cdc.decode import decode
from cdc.effects import EffectError
from cdc.errors import DecodeError
from cdc.metrics import Metrics
from cdc.model import Batch, TxEnd
from cdc.rules import load_rules
from cdc.settings import Settings
from contract.versions import version_of_lsn

RULES = load_rules(DEMO_RULES)
TOPIC = Settings().cdc_topic
CAPTURE = stack_capture()
END_VERSION = {c.offset: version_of_lsn(r.end_lsn) for c in CAPTURE if isinstance(r := decode(c.key, c.value), TxEnd)}
NO_OFFSET = -1001
Rebalance = Callable[["FakeConsumer", list[TopicPartition]], None]
GARBAGE = b"{nope"


def message(c: Captured, value: bytes | None = None) -> Message:
    return Message(topic=TOPIC, partition=0, offset=c.offset, key=c.key, value=value or c.value,
                   timestamp=(1, 1_795_802_848_600))


def records(first: int, last: int, garbage: int | None = None) -> list[Message]:
    """The capture's records `first`..`last` (inclusive); the one at `garbage` does not decode."""
    return [message(c, GARBAGE if c.offset == garbage else None) for c in CAPTURE[first:last + 1]]


def versions(first: int, last: int) -> list[str]:
    return [v for offset, v in END_VERSION.items() if first <= offset <= last]


class FakeConsumer:
    """One partition; each poll hands out the next chunk (its first record, then consume() the rest)."""

    def __init__(self, effects: list[str], chunks: Sequence[list[Message]] = (), committed: int = NO_OFFSET,
                 log_start: int = 0, when_drained: Callable[[], object] = lambda: None) -> None:
        self.effects = effects
        self.chunks = list(chunks)
        self.rest: list[Message] = []
        self._committed, self.log_start = committed, log_start
        self.when_drained = when_drained
        self.commits: list[int] = []
        self.on_assign: Rebalance | None = None
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Rebalance | None = None,
                  on_revoke: Rebalance | None = None) -> None:
        assert topics == [TOPIC]
        self.on_assign = on_assign

    def poll(self, timeout: float = -1) -> Message | None:
        if self.on_assign is not None:  # the first poll joins the group
            on_assign, self.on_assign = self.on_assign, None
            on_assign(self, [TopicPartition(TOPIC, 0)])
        if not self.chunks:
            self.when_drained()
            return None
        first, *self.rest = self.chunks.pop(0)
        return first

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        taken, self.rest = self.rest[:num_messages], self.rest[num_messages:]
        return taken

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        assert asynchronous and [(tp.topic, tp.partition) for tp in offsets] == [(TOPIC, 0)]
        self.commits.append(offsets[0].offset)
        self.effects.append(f"commit {offsets[0].offset}")

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p.partition, self._committed) for p in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        return self.log_start, len(CAPTURE)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p.partition, len(CAPTURE)) for p in partitions]

    def close(self) -> None:
        self.closed = True


class FakeRelease:
    """Redis: fails the next `failures` calls that carry batches (a Redis that is down), then releases."""

    def __init__(self, effects: list[str], failures: float = 0, watermark: str | None = None) -> None:
        self.effects = effects
        self.failures = failures
        self.failed = 0
        self.failing = threading.Event()  # set from the fourth failure on
        self.released: list[Batch] = []
        self._watermark = watermark
        self.closed = False

    def release(self, batches: Sequence[Batch]) -> int:
        if not batches:
            return 0  # as RedisRelease: no call to Redis at all
        if self.failed < self.failures:
            self.failed += 1
            self.effects.append("release failed")
            if self.failed >= 4:
                self.failing.set()
            raise EffectError("redis: Connection refused")
        self.released.extend(batches)
        self._watermark = max(self._watermark or "", batches[-1].version)
        self.effects.append(f"release {len(batches)}")
        return sum(len(b.keys) for b in batches)

    def watermark(self) -> str | None:
        return self._watermark

    def refusal(self) -> str | None:
        return None

    def trim(self, cutoff_ms: int, max_keys: int) -> int:
        self.effects.append(f"trim {cutoff_ms} {max_keys}")
        return 3

    def store_size(self) -> tuple[int, str | None]:
        return 42, "00000000019d0138"

    def close(self) -> None:
        self.closed = True


class FakeOutputs:
    """The ops and dead-letter topics: `flush` acknowledges what was produced, or fails `failures` times
    (and what it did not acknowledge is produced again, as KafkaOutputs does)."""

    def __init__(self, effects: list[str], failures: float = 0, ops_version: str = "") -> None:
        self.effects = effects
        self.failures = failures
        self.ops_version = ops_version
        self.refused: list[tuple[str, str]] = []
        self.produced: list[Batch] = []
        self.appended: list[Batch] = []  # acknowledged
        self.dead_letters: list[tuple[int | None, str]] = []
        self.notes: list[tuple[str, str]] = []
        self.closed = False

    def append_ops(self, batches: Sequence[Batch]) -> None:
        last = self.produced[-1].version if self.produced else self.ops_version
        new = [b for b in batches if not b.empty and b.version > last]
        self.produced.extend(new)
        self.effects.append(f"append {len(new)}")

    def flush(self, timeout_s: float = 10.0) -> None:
        produced, self.produced = self.produced, []
        if self.failures > 0:
            self.failures -= 1
            self.effects.append("flush failed")
            raise EffectError(f"kafka: {len(produced)} undelivered")
        self.appended.extend(produced)
        if produced:
            self.ops_version = produced[-1].version
        self.effects.append("flush")

    def dead_letter(self, msg: Message, error: DecodeError) -> None:
        self.dead_letters.append((msg.offset(), error.code))
        self.effects.append(f"dead_letter {msg.offset()}")

    def note(self, code: str, message: str, key: bytes | None = None) -> None:
        self.notes.append((code, message))
        self.effects.append(f"note {code}")

    def close(self) -> None:
        self.closed = True


class Shell:
    """A Pipeline over the fakes; `assign()` assigns it partition 0 as the first poll of `run()` does."""

    def __init__(self, *, chunks: Sequence[list[Message]] = (), committed: int = NO_OFFSET, log_start: int = 0,
                 redis_failures: float = 0, watermark: str | None = None, ops_failures: float = 0,
                 ops_version: str = "", retry_max_s: float = 5.0, retention_s: float = 0.0,
                 commit_interval_ms: float = 0.0) -> None:
        self.effects: list[str] = []
        self.stop = threading.Event()
        self.metrics = Metrics()
        self.consumer = FakeConsumer(self.effects, chunks, committed, log_start, when_drained=self.stop.set)
        self.redis = FakeRelease(self.effects, redis_failures, watermark)
        self.outputs = FakeOutputs(self.effects, ops_failures, ops_version)
        settings = Settings(cdc_retry_max_s=retry_max_s, version_retention_s=retention_s,
                            cdc_commit_interval_ms=commit_interval_ms)
        self.pipeline = Pipeline(settings, RULES, self.metrics, self.stop, consumer=self.consumer, redis=self.redis,
                                 outputs=self.outputs)

    def assign(self) -> Shell:
        self.pipeline._on_assign(self.consumer, [TopicPartition(TOPIC, 0)])
        return self

    def process(self, msgs: list[Message]) -> None:
        self.pipeline._process(msgs, time.time() * 1000)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


# -- commit only after the effect


def test_consumer_shell_commits_after_the_release_and_the_ops_flush() -> None:
    shell = Shell().assign()
    shell.process(records(0, 27))  # six heartbeat transactions and one that changes two cards
    assert shell.effects == ["release 7", "append 1", "flush", "commit 28"]
    assert [b.version for b in shell.redis.released] == versions(0, 27)
    assert [b.tx_id for b in shell.outputs.appended] == ["734"]  # heartbeats invalidate nothing


def test_consumer_shell_never_commits_past_an_open_transaction() -> None:
    shell = Shell().assign()
    shell.process(records(0, 25))  # ends inside transaction 734 (BEGIN at 24)
    assert shell.effects[-1] == "commit 24"
    shell.effects.clear()
    shell.process(records(26, 26))  # still inside it: nothing released, the same offset again
    assert shell.effects == ["append 0", "flush", "commit 24"]
    shell.effects.clear()
    shell.process(records(27, 27))
    assert shell.effects == ["release 1", "append 1", "flush", "commit 28"]


def test_consumer_shell_failing_release_commits_nothing_until_it_succeeds() -> None:
    shell = Shell(redis_failures=2).assign()
    shell.process(records(0, 27))
    assert shell.effects == ["release failed", "release failed", "release 7", "append 1", "flush", "commit 28"]
    assert shell.metric("freshwire_cdc_effect_retries_total", effect="redis") == 2
    assert shell.metrics.effects_ok


def test_consumer_shell_failing_ops_flush_commits_nothing_until_it_succeeds() -> None:
    shell = Shell(ops_failures=2).assign()
    shell.process(records(0, 27))
    assert shell.effects == ["release 7", "append 1", "flush failed", "append 1", "flush failed", "append 1", "flush",
                             "commit 28"]
    assert [b.tx_id for b in shell.outputs.appended] == ["734"]
    assert shell.metric("freshwire_cdc_effect_retries_total", effect="kafka") == 2


def test_consumer_shell_commits_at_most_once_per_interval_and_at_once_when_quiet() -> None:
    """With a commit interval, a chunk right after a commit leaves its offset for later; the quiet poll
    that follows commits it (here: the loop's poll finds nothing more, then the close commits too)."""
    shell = Shell(commit_interval_ms=60_000).assign()
    shell.process(records(0, 7))
    assert shell.effects[-1] == "commit 8"  # the first chunk commits at once
    shell.effects.clear()
    shell.process(records(8, 27))
    assert shell.effects == ["release 5", "append 1", "flush"]  # done, not committed yet
    shell.pipeline._commit_now()  # what a quiet poll, a revocation or the close does
    assert shell.effects[-1] == "commit 28"
    shell.effects.clear()
    shell.pipeline._commit_now()
    assert shell.effects == []  # nothing new: no commit


def test_consumer_shell_run_commits_the_last_chunk_on_the_quiet_poll() -> None:
    shell = Shell(chunks=[records(0, 7), records(8, 27)], commit_interval_ms=60_000)
    shell.pipeline.run()
    assert shell.consumer.commits == [8, 28]


def test_consumer_shell_revocation_commits_what_was_done_first() -> None:
    shell = Shell(commit_interval_ms=60_000).assign()
    shell.process(records(0, 7))
    shell.process(records(8, 27))
    shell.pipeline._on_revoke(shell.consumer, [TopicPartition(TOPIC, 0)])
    assert shell.consumer.commits == [8, 28] and shell.pipeline.assemblers == {}


def test_consumer_shell_close_after_a_failed_chunk_commits_only_what_was_done() -> None:
    """A chunk read but never released (Redis down, then a stop): the close commits the last chunk whose
    effects were done, not the offset the failed chunk's reading moved the assembler to."""
    reference = Shell().assign()
    reference.process(records(0, 7))
    reference.process(records(8, 15))
    done_offset = reference.consumer.commits[-1]
    shell = Shell(commit_interval_ms=60_000, retry_max_s=0.01).assign()
    shell.process(records(0, 7))
    shell.process(records(8, 15))  # done, its commit left for later
    shell.redis.failures = float("inf")
    shell.stop.set()  # the retry of the next chunk's release gives up
    with pytest.raises(EffectError):
        shell.process(records(16, 27))
    shell.pipeline.close()
    assert shell.consumer.commits == [8, done_offset] and done_offset < 28


# -- a record that does not decode is dead-lettered, and the stream goes on


def test_consumer_shell_dead_letter_between_transactions_is_committed_past() -> None:
    shell = Shell().assign()
    shell.process(records(0, 4, garbage=4))  # the heartbeat after transaction 728 does not decode
    assert shell.outputs.dead_letters == [(4, "bad_json")]
    # the dead letter is produced before the flush that precedes the commit, so it is acknowledged first
    assert shell.effects == ["dead_letter 4", "release 1", "append 0", "flush", "commit 5"]
    assert shell.metric("freshwire_cdc_dlq_total", code="bad_json") == 1
    shell.effects.clear()
    shell.process(records(5, 7))
    assert shell.effects == ["release 1", "append 0", "flush", "commit 8"]
    assert [b.tx_id for b in shell.redis.released] == ["728", "729"]


def test_consumer_shell_dead_letter_inside_a_transaction_invalidates_its_table_whole() -> None:
    shell = Shell().assign()
    shell.process(records(20, 25, garbage=25))  # the first of transaction 734's two card updates
    assert shell.outputs.dead_letters == [(25, "bad_json")]
    assert shell.effects[-1] == "commit 24"  # not past the dead letter: transaction 734 is open
    shell.effects.clear()
    shell.process(records(26, 31))
    tx734, tx735 = shell.redis.released[-2:]
    assert (tx734.tx_id, tx734.missing) == ("734", (("public.cards", 1),))
    assert set(RULES.for_missing("public.cards").prefixes) <= set(tx734.prefixes)
    assert tx735.tx_id == "735"  # and the stream goes on
    assert shell.effects == ["note missing_events", "release 2", "append 2", "flush", "commit 32"]
    assert shell.metric("freshwire_cdc_missing_events_total", table="public.cards") == 1


# -- a stop while an effect is retried


def test_consumer_shell_stop_during_retry_ends_run_promptly_and_commits_nothing() -> None:
    shell = Shell(chunks=[records(0, 27)], redis_failures=float("inf"), retry_max_s=60)
    raised: list[Exception] = []

    def run() -> None:
        try:
            shell.pipeline.run()
        except Exception as exc:  # handed to the test's thread
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # a loop that ignored the stop would not hang pytest
    thread.start()
    assert shell.redis.failing.wait(5), "the release was not retried"
    stopped = time.monotonic()
    shell.stop.set()  # the loop is now in a back-off of 0.4 s or more
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 0.3
    assert len(raised) == 1 and isinstance(raised[0], EffectError)
    assert shell.consumer.commits == []
    assert "append" not in " ".join(shell.effects)  # nothing after the release either
    assert shell.consumer.closed and shell.redis.closed and shell.outputs.closed
    assert not shell.metrics.effects_ok


def test_consumer_shell_batch_stopped_in_retry_is_released_by_the_next_run() -> None:
    first = Shell(redis_failures=1).assign()
    first.stop.set()
    with pytest.raises(EffectError):
        first.process(records(0, 27))
    assert first.effects == ["release failed"]
    again = Shell(committed=NO_OFFSET, watermark=first.redis.watermark()).assign()
    again.process(records(0, 27))
    assert again.effects == ["release 7", "append 1", "flush", "commit 28"]


# -- assignment: replays skipped and counted; flushes after lost invalidations


def test_consumer_shell_skips_and_counts_replayed_batches() -> None:
    released = END_VERSION[23]  # a restart: everything up to transaction 733 was released and appended
    shell = Shell(committed=0, watermark=released, ops_version=released).assign()
    shell.process(records(0, 31))
    assert [b.tx_id for b in shell.redis.released] == ["734", "735"]
    assert shell.metric("freshwire_cdc_replayed_batches_total") == 6
    shell.process(records(32, 35))
    assert shell.metric("freshwire_cdc_replayed_batches_total") == 6


def test_consumer_shell_retention_overrun_flushes_every_key_with_the_first_release() -> None:
    shell = Shell(committed=5, log_start=20, watermark=END_VERSION[31], ops_version=END_VERSION[31]).assign()
    shell.process(records(20, 31))
    first, *rest = shell.redis.released
    assert (first.tx_id, first.lapse) == ("733", "flush") and "" in first.prefixes
    assert [b.tx_id for b in rest] == ["734", "735"] and all(b.lapse == "" for b in rest)
    assert shell.metric("freshwire_cdc_retention_overruns_total") == 1
    assert shell.metric("freshwire_cdc_replayed_batches_total") == 0


def test_consumer_shell_emptied_store_flushes_every_key_with_the_first_release() -> None:
    shell = Shell(committed=20, watermark=None, ops_version=END_VERSION[31]).assign()
    shell.process(records(20, 31))
    assert [(b.tx_id, b.lapse) for b in shell.redis.released] == [("733", "flush"), ("734", ""), ("735", "")]
    assert shell.metric("freshwire_cdc_store_resets_total") == 1
    assert shell.metric("freshwire_cdc_retention_overruns_total") == 0


def test_consumer_shell_trims_versions_past_the_retention_horizon() -> None:
    """#12: with a retention horizon the loop trims, at most once per interval, and exports the store's size."""
    shell = Shell(retention_s=60).assign()
    before_ms = time.time() * 1000 - 60_000
    shell.pipeline._trim_versions()
    shell.pipeline._trim_versions()  # within the interval: nothing more
    trims = [e for e in shell.effects if e.startswith("trim")]
    assert len(trims) == 1
    cutoff, max_keys = (int(x) for x in trims[0].split()[1:])
    assert before_ms - 1000 <= cutoff <= before_ms + 1000 and max_keys == 0
    assert shell.metric("freshwire_versions_trimmed_total") == 3
    assert shell.metric("freshwire_version_store_keys") == 42


def test_consumer_shell_keeps_every_version_by_default() -> None:
    shell = Shell().assign()
    shell.pipeline._trim_versions()
    assert not [e for e in shell.effects if e.startswith("trim")]

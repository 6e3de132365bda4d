"""What the consumer loop (cdc/consumer.py) uses of Kafka and Redis, as protocols.

The real implementations are confluent_kafka's `Consumer` and cdc/effects.py's `RedisRelease` and
`KafkaOutputs`; the unit tests drive the loop with in-process fakes (tests/unit/test_consumer_shell.py).
Each member is one the loop calls, with the guarantee the loop relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Protocol

from confluent_kafka import Message, TopicPartition

from cdc.errors import DecodeError
from cdc.model import Batch


class InputConsumer(Protocol):
    """The input topic's group consumer (confluent_kafka.Consumer). Rebalance callbacks run inside
    `poll` and `consume`, never in between, so the loop's per-partition state changes only there."""

    def subscribe(self, topics: list[str],
                  on_assign: Callable[[InputConsumer, list[TopicPartition]], None] | None = None,
                  on_revoke: Callable[[InputConsumer, list[TopicPartition]], None] | None = None) -> None: ...

    def poll(self, timeout: float = -1) -> Message | None:
        """The next record or error, waiting at most `timeout` seconds; None if there was none."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        """Up to `num_messages` records, waiting at most `timeout` seconds (0: only those in hand)."""

    def commit(self, *, offsets: list[TopicPartition], asynchronous: Literal[True] = ...) -> None:
        """Store `offsets` ("the next to read") for the group, without waiting; raises KafkaException if
        the request cannot be sent (e.g. no longer a group member)."""

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        """The group's committed offset of each partition (negative when none); raises KafkaException."""

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        """(log start, log end) of a partition; raises KafkaException."""

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The offset the next poll reads from, per partition (OFFSET_INVALID before the first)."""

    def close(self) -> None: ...


class Release(Protocol):
    """Redis: versions, fan-out and the watermark (cdc.effects.RedisRelease). Every call is safe to repeat."""

    def release(self, batches: Sequence[Batch]) -> int:
        """Advance each batch's keys to its version (only forward), publish what advanced and move the
        watermark, in order; returns the keys that advanced. Raises cdc.effects.EffectError when it did
        not complete (`retriable` False: Redis refuses this call itself and would refuse it again)."""

    def watermark(self) -> str | None:
        """The last released version (None: Redis holds none); raises EffectError if Redis did not answer."""

    def refusal(self) -> str | None:
        """Why this Redis cannot keep the version store, with the fix; None if it can or cannot tell."""

    def trim(self, cutoff_ms: int, max_keys: int) -> int:
        """Drop versions older than the retention horizon, raising it; returns how many went."""

    def store_size(self) -> tuple[int, str | None]:
        """(keys holding a version, the horizon)."""

    def close(self) -> None: ...


class Outputs(Protocol):
    """The ops topic and the dead-letter topic (cdc.effects.KafkaOutputs)."""

    ops_version: str
    """The last version acknowledged on the ops topic ("" if none): batches at or below it are not
    appended again."""
    refused: list[tuple[str, str]]
    """(what, why) of records Kafka refused for good since the loop last cleared it (noted in the DLQ)."""

    def append_ops(self, batches: Sequence[Batch]) -> None:
        """Produce one ops record per non-empty batch above those already produced (no wait)."""

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until everything produced (ops, dead letters, notes) is acknowledged; raises EffectError
        otherwise, and the loop produces and flushes again."""

    def dead_letter(self, msg: Message, error: DecodeError) -> None:
        """Produce `msg` to the dead-letter topic with the error in its headers (acknowledged by `flush`)."""

    def note(self, code: str, message: str, key: bytes | None = None) -> None:
        """Produce a dead letter that carries no record, only what happened (acknowledged by `flush`)."""

    def close(self) -> None: ...

"""Where a newly assigned partition's replay resumes releasing, and whether its next release flushes
every key. Pure: offsets and versions in, a plan out; the consumer reads them on assignment
(cdc/consumer.py) and builds the partition's assembler from the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contract.redis_health import store_was_emptied

# store_emptied: Redis holds no watermark behind a committed offset (it lost the version store).
# retention_overrun: records between the committed offset and the log start expired unread.
FlushReason = Literal["store_emptied", "retention_overrun"]


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    skip_through: str
    """Batches at or below this version were released and appended before: skipped ("" skips none)."""
    reasons: tuple[FlushReason, ...] = ()
    """Why the next release also invalidates every key (prefix ""); empty when it does not."""

    @property
    def flush(self) -> bool:
        return bool(self.reasons)


def replay_plan(committed: int | None, log_start: int | None, watermark: str | None,
                ops_version: str) -> ReplayPlan:
    """The plan for a partition whose group offset is `committed` (None: unknown, negative: none) and
    whose log starts at `log_start` (None: unknown), given Redis' watermark ("" when Redis holds none,
    None when it could not be read) and the last version on the ops topic ("" when there is none or it
    could not be read). An unreadable watermark claims nothing: no flush, and nothing skipped.

    Everything up to the watermark was released (the release script moves it atomically with the
    versions, in commit order) and everything up to `ops_version` is on the ops topic, so a replay
    skips batches at or below both. When every key is flushed, nothing is skipped: the flush goes out
    with the first batch the replay releases, not after the watermark.
    """
    reasons: list[FlushReason] = []
    if watermark is not None and store_was_emptied(watermark, committed):
        reasons.append("store_emptied")
    if committed is not None and log_start is not None and 0 <= committed < log_start:
        reasons.append("retention_overrun")
    skip = "" if reasons or watermark is None else min(watermark, ops_version)
    return ReplayPlan(skip, tuple(reasons))

"""The replica gate's pure decision: release in commit order what every replica has replayed."""

from __future__ import annotations

from cdc.model import Batch
from cdc.replicas import HoldDecision, decide, releasable
from contract.versions import version_of_lsn


def _batches(*lsns: int) -> list[Batch]:
    return [Batch(version=version_of_lsn(n), tx_id=str(n), commit_ts_ms=0, keys=("k",)) for n in lsns]


def test_replicas_releasable_is_the_replayed_prefix() -> None:
    batches = _batches(100, 200, 300)
    assert releasable(batches, 99) == 0
    assert releasable(batches, 100) == 1      # replayed exactly to the commit's end: visible
    assert releasable(batches, 299) == 2
    assert releasable(batches, 10_000) == 3


def test_replicas_order_is_kept_even_if_a_later_batch_is_covered() -> None:
    """Versions increase in commit order, so a covered later batch never jumps an uncovered head."""
    assert releasable(_batches(500, 600), 550) == 1


def test_replicas_hold_policy_release_after_max_hold() -> None:
    batches = _batches(100, 200)
    assert decide(batches, 50, held_s=0.1, max_hold_s=5, policy="release") == HoldDecision(0, False)
    assert decide(batches, 50, held_s=5.0, max_hold_s=5, policy="release") == HoldDecision(1, True)
    assert decide(batches, 50, held_s=60, max_hold_s=5, policy="hold") == HoldDecision(0, False)
    assert decide(batches, 150, held_s=60, max_hold_s=5, policy="release") == HoldDecision(1, False)
    assert decide([], 0, held_s=60, max_hold_s=5, policy="release") == HoldDecision(0, False)

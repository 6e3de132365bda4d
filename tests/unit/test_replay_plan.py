"""cdc.replay.replay_plan: where a newly assigned partition resumes releasing, and when it flushes every key."""

from __future__ import annotations

import pytest

from cdc.replay import ReplayPlan, replay_plan
from contract.versions import version_of_lsn

OLD, NEW = version_of_lsn(26619688), version_of_lsn(26623968)
NO_OFFSET = -1001  # confluent_kafka.OFFSET_INVALID: the group never committed


@pytest.mark.parametrize("committed, log_start, watermark, ops_version, plan", [
    # a new group on a fresh stack: nothing released, nothing to skip, nothing lost
    (NO_OFFSET, 0, "", "", ReplayPlan("")),
    # a restart: skip what both effects did, i.e. up to the older of the two
    (40, 0, OLD, NEW, ReplayPlan(OLD)),
    (40, 0, NEW, OLD, ReplayPlan(OLD)),
    (40, 0, NEW, "", ReplayPlan("")),  # the ops topic is empty or unread: append everything again
    (40, 40, NEW, NEW, ReplayPlan(NEW)),  # committed exactly at the log start: nothing expired
    # committed offsets, log start or watermark that could not be read claim nothing
    (None, None, NEW, OLD, ReplayPlan(OLD)),
    (40, None, NEW, NEW, ReplayPlan(NEW)),
    # a new group whose topic already expired records: nothing it ever had is lost
    (NO_OFFSET, 20, "", "", ReplayPlan("")),
    # retention overrun: flush, and skip nothing, so the flush goes out with the first release
    (10, 20, NEW, NEW, ReplayPlan("", ("retention_overrun",))),
    (0, 20, NEW, NEW, ReplayPlan("", ("retention_overrun",))),
    # Redis emptied behind a committed offset
    (40, 0, "", NEW, ReplayPlan("", ("store_emptied",))),
    (40, None, "", "", ReplayPlan("", ("store_emptied",))),
    (0, 0, "", NEW, ReplayPlan("")),  # committed offset 0: nothing was ever released
    # both at once: both are counted
    (10, 20, "", "", ReplayPlan("", ("store_emptied", "retention_overrun"))),
])
def test_replay_plan_table(committed: int | None, log_start: int | None, watermark: str, ops_version: str,
                           plan: ReplayPlan) -> None:
    assert replay_plan(committed, log_start, watermark, ops_version) == plan


@pytest.mark.parametrize("committed", [None, NO_OFFSET, 0, 5, 19, 20, 21])
@pytest.mark.parametrize("log_start", [None, 0, 20])
@pytest.mark.parametrize("watermark", ["", OLD, NEW])
def test_replay_plan_a_flush_skips_nothing(committed: int | None, log_start: int | None, watermark: str) -> None:
    plan = replay_plan(committed, log_start, watermark, NEW)
    assert plan.flush == bool(plan.reasons)
    assert plan.skip_through == ("" if plan.flush else watermark)


def test_replay_plan_an_unreadable_watermark_claims_nothing() -> None:
    """Redis did not answer at assignment: no flush (nothing says it lost data) and nothing skipped
    (the replay goes through Redis, whose script ignores what it already holds)."""
    from cdc.replay import replay_plan

    plan = replay_plan(120, 0, None, "00000000019d0138")
    assert plan.reasons == () and plan.skip_through == ""

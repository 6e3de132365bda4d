"""The soak's two-minute version (the 60-minute one is `make soak`): churn of WebSocket sessions and
awaits against a gateway of its own on the real stack, writes at 100 tx/s, Redis and the cdc consumer
SIGKILLed and restarted part-way. Afterwards every count of short-lived state is back: no connection,
subscribed key or await left in the gateway, its asyncio tasks, threads and fds (Redis pool aside, which
is bounded) at their baseline, no persistent Redis key more. Counts, never timings or RSS."""

from __future__ import annotations

import asyncio

from bench.soak import Plan, run_soak
from connectors.stack_settings import StackSettings

PLAN = Plan(churn_s=80, rate=100, sample_s=3, sessions_per_s=8, max_clients=40, cooldown_s=10, seed=3)


def test_two_minute_soak_returns_every_count_to_its_baseline(stack_settings: StackSettings) -> None:
    record = asyncio.run(run_soak(stack_settings, PLAN, log=lambda *_args: None))

    missed = [v for v in record["verdicts"] if not v["met"]]
    assert not missed, missed
    names = {v["name"] for v in record["verdicts"]}
    for gauge in ("connections", "subscribed_keys", "awaits_pending", "await_tokens"):
        assert f"gateway {gauge} after the churn" in names
    assert any(n.startswith("gateway tasks after the churn") for n in names)

    # The churn and the faults really happened, and nothing broke the writes or the sink.
    assert [f["part"] for f in record["faults"]] == ["redis", "cdc"]
    outcomes = record["churn"]["outcomes"]
    for outcome in ("clean: closed 1000", "abrupt: dropped", "expiring: closed 4001"):
        assert outcomes.get(outcome, 0) > 0, outcomes
    assert any(o.startswith("await: ") for o in outcomes) and any(o.startswith("http_wait: HTTP") for o in outcomes)
    assert record["writes"]["errors"] == {} and record["writes"]["commits"] > 1000
    # also a verdict: every write reached the sink, counted once per batch however often it was POSTed
    assert record["sink_posts"] >= record["sink_batches"] >= record["writes"]["commits"] > 0
    during = [s for s in record["samples"] if s["phase"] == "churn" and s.get("gateway")]
    assert max(s["gateway"]["connections"] for s in during) > 0  # the gauges moved: they were read live

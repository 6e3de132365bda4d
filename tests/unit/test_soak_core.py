"""The soak's verdicts (bench/soak_core.py): RSS slope, counts back to zero and to the baseline."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak_core import SoakError, expiring_keys_ratio, second_half, sink_verdict, slope_per_10_min, verdicts


def _sample(t: float, phase: str, rss_mb: float = 50.0, tasks: int = 5, fds: int = 20, conns: int = 0,
            keys: int = 100) -> dict[str, Any]:
    proc = {"rss_kb": rss_mb * 1024, "fds": fds, "threads": 3}
    gateway = {**proc, "fds_but_redis": fds, "redis_sockets": 5, "tasks": tasks, "connections": conns,
               "subscribed_keys": conns * 2, "awaits_pending": 0, "await_tokens": 0}
    return {"t": t, "phase": phase, "gateway": gateway, "cdc": dict(proc), "sink": dict(proc),
            "redis": {"used_memory": 1e6, "keys": keys + 500, "persistent_keys": keys, "expiring_keys": 500}}


def _run(rss_growth_mb_per_s: float = 0.0, end_tasks: int = 5, end_conns: int = 0,
         end_keys: int = 100) -> list[dict[str, Any]]:
    samples = [_sample(0, "warmup"), _sample(10, "baseline")]
    samples += [_sample(t, "churn", 50 + rss_growth_mb_per_s * t, tasks=40, fds=90, conns=30)
                for t in range(20, 620, 10)]
    samples.append(_sample(630, "cooldown", tasks=end_tasks, conns=end_conns, keys=end_keys))
    return samples


def test_slope_is_per_ten_minutes_and_zero_when_undefined() -> None:
    assert slope_per_10_min([(0, 0.0), (60, 1.0), (120, 2.0)]) == pytest.approx(10.0)
    assert slope_per_10_min([(5, 3.0)]) == 0.0
    assert slope_per_10_min([(5, 3.0), (5, 4.0)]) == 0.0


def test_a_flat_run_meets_every_target() -> None:
    found = verdicts(_run())
    assert found and all(v.met for v in found), [v.line() for v in found if not v.met]


def test_rss_growth_is_judged_over_the_second_half_only() -> None:
    samples = _run()
    for s in samples:  # a step up in the first half (warming caches) is not growth
        if s["phase"] == "churn" and s["t"] < 200:
            s["cdc"]["rss_kb"] = 10 * 1024
    assert all(v.met for v in verdicts(samples))
    assert second_half(samples)[0]["t"] >= 310
    leaking = verdicts(_run(rss_growth_mb_per_s=0.01))  # 6 MB per 10 min
    missed = [v for v in leaking if not v.met]
    assert {v.name.split()[0] for v in missed} == {"gateway", "cdc", "sink"}
    assert missed[0].figure == pytest.approx(6.0)


def test_counts_that_stay_up_after_the_churn_are_missed() -> None:
    missed = {v.name for v in verdicts(_run(end_tasks=6, end_conns=1, end_keys=101)) if not v.met}
    assert missed == {"gateway connections after the churn", "gateway subscribed_keys after the churn",
                      "gateway tasks after the churn (baseline 5)",
                      "redis persistent_keys after the churn (baseline 100)"}


def test_a_count_that_flickers_back_is_not_a_leak() -> None:
    samples = _run()
    samples.append({**samples[-1], "sink": {**samples[-1]["sink"], "fds": 21}})  # one keep-alive socket more
    assert all(v.met for v in verdicts(samples))
    samples[-2]["sink"] = {**samples[-2]["sink"], "fds": 21}  # up in every cool-down sample: a leak
    assert [v.name for v in verdicts(samples) if not v.met] == ["sink fds after the churn (baseline 20)"]


def test_expiring_keys_are_bounded_by_the_write_rate_and_their_ttl() -> None:
    samples = _run()
    for s in samples:  # 1 marker per second of the run, none expiring before 600 s: right at the bound
        s["redis"]["expiring_keys"] = 500 + min(max(0, s["t"] - 10), 600)
    assert expiring_keys_ratio(samples, 1.0) == pytest.approx(1.0, abs=0.01)
    assert all(v.met for v in verdicts(samples, write_rate=1.0))
    missed = [v for v in verdicts(samples, write_rate=0.5) if not v.met]  # twice what 0.5 tx/s can leave
    assert len(missed) == 1 and missed[0].name.startswith("redis expiring keys") and missed[0].figure > 1.9
    for s in samples:  # markers that never expire: past the TTL the bound stops growing
        s["t"] += 1200 if s["phase"] == "cooldown" else 0
    samples[-1]["redis"]["expiring_keys"] = 500 + 1800
    assert expiring_keys_ratio(samples, 1.0) == pytest.approx(3.0, abs=0.01)


def test_a_part_down_at_the_end_is_missed_not_crashed() -> None:
    samples = _run()
    samples[-1]["sink"] = None
    missed = [v for v in verdicts(samples, rss=False) if not v.met]
    assert [v.name for v in missed] == ["sink fds after the churn (not sampled)",
                                        "sink threads after the churn (not sampled)"]


def test_samples_without_a_phase_cannot_be_judged() -> None:
    with pytest.raises(SoakError, match="cooldown"):
        verdicts(_run()[:-1])


def test_the_sink_is_met_with_a_batch_per_write_or_more_and_missed_with_fewer() -> None:
    assert sink_verdict(commits=1000, batches=1000).met
    assert sink_verdict(commits=1000, batches=1003).met  # a write by someone else is a batch too
    missed = sink_verdict(commits=1000, batches=996)
    assert not missed.met and missed.figure == 996 and missed.target == ">= 1000"

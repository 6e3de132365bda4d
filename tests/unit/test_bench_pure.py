"""The pure parts of the latency and throughput benchmarks and their shared report helpers."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from bench.latency import HOPS, breakdown, paced
from bench.report import positive_rate, profile_shares, rate_list, summary
from bench.throughput import (
    hold_rate,
    metric_value,
    replay_rate,
    sustained_target,
    verdict,
    windows,
)


def test_breakdown_joins_commits_messages_and_receipts_by_transaction_and_version() -> None:
    commits = {"100": 1000.0, "101": 1010.0, "999": 2000.0}
    published = {"100": ("v1", (1004.0, 1006.0, 1007.0), 1008.0), "101": ("v2", (), 1020.0)}
    receipts = [("v1", 1009.0), ("v1", 1011.0), ("v2", 1025.0), ("unknown", 3000.0)]
    result = breakdown(commits, published, receipts)
    assert result["end_to_end_ms"]["count"] == 3
    assert result["end_to_end_ms"]["max"] == 15.0
    hops = result["hops_ms"]
    assert set(hops) == set(HOPS)
    assert hops["commit→kafka"]["p50"] == 4.0          # only the message that carried hop times
    assert hops["kafka→consumer"]["p50"] == 2.0
    assert hops["consumer→publish"]["p50"] == 1.0
    assert hops["publish→redis sub"]["p50"] == 1.0
    assert hops["redis→client"]["count"] == 3


def test_summary_of_nothing_is_zeros_and_of_values_is_ordered() -> None:
    assert summary([])["count"] == 0
    s = summary([float(i) for i in range(1, 101)])
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["max"] == 100.0


def test_paced_never_runs_ahead_and_stops_after_its_time() -> None:
    assert list(paced(1000.0, 0.0)) == []
    assert 1 <= len(list(paced(1000.0, 0.01))) <= 11


def test_profile_shares_counts_inclusive_and_self_time() -> None:
    lines = ["main;loop;decode 30", "main;loop;poll 10", "main;idle 60", "garbage", ""]
    shares = {s["function"]: s for s in profile_shares(lines)}
    assert shares["main"]["inclusive_pct"] == 100.0
    assert shares["loop"]["inclusive_pct"] == 40.0 and shares["loop"]["self_pct"] == 0.0
    assert shares["decode"]["self_pct"] == 30.0
    assert profile_shares([]) == []


def test_metric_value_reads_one_unlabelled_sample() -> None:
    text = "# HELP x\nfreshwire_cdc_records_total 1234.0\nfreshwire_cdc_records_created 9.9e+09\n"
    assert metric_value(text, "freshwire_cdc_records_total") == 1234.0
    assert math.isnan(metric_value(text, "missing"))


def test_replay_rate_leaves_the_start_up_out() -> None:
    samples = [(0.0, 0.0), (1.0, 0.0), (2.0, 1000.0), (4.0, 101000.0)]
    assert replay_rate(samples) == {"records": 101000.0, "seconds": 2.0, "records_per_s": 50000.0}
    assert replay_rate([(0.0, 0.0)])["records_per_s"] == 0.0


def _load(lag_ms: float) -> dict[str, object]:
    commits = {str(i): 1000.0 + i * 100 for i in range(10)}
    published = {str(i): (f"v{i}", (), commits[str(i)] + lag_ms) for i in range(10)}
    receipts = [(f"v{i}", commits[str(i)] + lag_ms + 1) for i in range(10)]
    return {"t0": 1000.0, "commits": commits, "published": published, "receipts": receipts, "lag_records": []}


def test_verdict_holds_only_when_rate_latency_and_lag_are_all_within_limits() -> None:
    assert verdict(10.0, 1, 1.0, _load(20.0))["held"]
    assert not verdict(10.0, 1, 1.0, _load(400.0))["held"]      # p99 over 250 ms
    assert not verdict(100.0, 1, 1.0, _load(20.0))["held"]      # 10 events/s is not 100
    unreleased = _load(20.0)
    del unreleased["published"]["3"]  # type: ignore[attr-defined]
    assert verdict(10.0, 1, 1.0, unreleased)["unreleased_transactions"] == 1


def test_windows_split_by_commit_time() -> None:
    ws = windows(_load(20.0), rows=2, window_s=0.5)
    assert [w["t_s"] for w in ws] == [0.0, 0.5]
    assert ws[0]["events_per_s"] == 20.0          # 5 transactions x 2 rows in 0.5 s
    assert ws[0]["max_lag_ms"] == 20.0


def _run(n: int, best: float, held: bool = True) -> dict[str, Any]:
    rate = hold_rate(best, 6000)
    hold = {"rate": rate, "held": held, "commit_to_client_ms": {"p50": 10.0, "p99": 90.0 + n},
            "commit_to_release_ms": {"max": 400.0}}
    return {"run": n, "best": best, "hold": hold if best else None, "steps": []}


def test_the_hold_runs_at_the_target_not_at_a_higher_step() -> None:
    assert hold_rate(8000, 6000) == 6000   # 8,000 held for a step: the 10-minute hold is the target's 6,000
    assert hold_rate(4000, 6000) == 4000   # below the target: hold what held (the target is missed anyway)
    assert hold_rate(0.0, 6000) == 0.0     # no step held: no hold


def test_sustained_target_needs_every_run_to_hold_six_thousand_for_ten_minutes() -> None:
    three = [_run(1, 6000), _run(2, 8000), _run(3, 6000)]
    ok = sustained_target(three, 600)
    assert ok["met"] and ok["runs_held"] == 3 and [r["p99_ms"] for r in ok["spread"]] == [91.0, 92.0, 93.0]
    assert not sustained_target(three, 300)["met"]                       # a shorter hold proves less
    assert not sustained_target(three[:2], 600)["met"]                   # two runs are not three
    assert sustained_target([_run(1, 6000), _run(2, 4000), _run(3, 6000)], 600)["runs_held"] == 2
    assert not sustained_target([_run(1, 6000), _run(2, 6000, held=False), _run(3, 6000)], 600)["met"]
    assert sustained_target([_run(1, 0.0)], 600)["spread"][0]["p99_ms"] is None
    assert [r["hold_events_per_s"] for r in ok["spread"]] == [6000, 6000, 6000]
    assert [r["best_step"] for r in ok["spread"]] == [6000, 8000, 6000]


def test_rate_arguments_are_numbers_above_zero() -> None:
    assert positive_rate("6000") == 6000.0
    assert rate_list("2000,4000.5") == [2000.0, 4000.5]
    for bad in ("0", "-1", "nan", "inf", "fast", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_rate(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        rate_list("2000,,4000")

"""bench/slow_reader.py's pure judge: frame ages and the last version's delay."""

from __future__ import annotations

from bench.slow_reader import judge


def test_judge_ages_each_read_frame_from_its_release_and_times_the_last_version() -> None:
    stamps = {"0000000000000001": 10.0, "0000000000000002": 10.5, "0000000000000003": 11.0}
    reads = [("0000000000000001", 10.2), ("0000000000000003", 12.0)]
    out = judge(reads, stamps)
    assert out["released"] == 3 and out["frames"] == 2 and out["distinct_versions"] == 2
    assert out["age_ms"]["max"] == 1000.0 and out["age_ms"]["count"] == 2
    assert out["got_last_version"] and out["last_after_s"] == 1.0


def test_judge_without_the_last_version_or_any_release() -> None:
    stamps = {"0000000000000001": 1.0, "0000000000000002": 2.0}
    out = judge([("0000000000000001", 1.5)], stamps)
    assert not out["got_last_version"] and out["last_after_s"] is None
    empty = judge([], {})
    assert empty["frames"] == 0 and empty["age_ms"]["count"] == 0 and empty["last_after_s"] is None

"""The soak's verdicts, from its samples: pure (samples in, verdicts out), tested in
tests/unit/test_soak_core.py.

A sample is a dict: {"t": seconds since the start, "phase": "warmup" | "baseline" | "churn" | "cooldown",
<process>: {"rss_kb", "fds", "threads", ...} or None while it is down, "redis": {"used_memory", "keys"}}.
The gateway's entry also holds its gauges: "connections", "subscribed_keys", "awaits_pending",
"await_tokens", "tasks".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.backend_redis import POOL_SIZE

Sample = dict[str, Any]

PROCESSES = ("gateway", "cdc", "sink")
RSS_MB_PER_10_MIN = 1.0              # the bound on RSS growth over the churn's second half
ZERO_AFTER_CHURN = ("connections", "subscribed_keys", "awaits_pending", "await_tokens")
BACK_TO_BASELINE = (("gateway", "tasks"), ("gateway", "fds_but_redis"), ("cdc", "fds"), ("sink", "fds"),
                    ("gateway", "threads"), ("cdc", "threads"), ("sink", "threads"), ("redis", "persistent_keys"))
# The gateway's Redis connections are a pool that keeps up to POOL_SIZE idle connections once a burst
# needed them (gateway/backend_redis.py): bounded, not a leak, so they are judged against that bound.
GATEWAY_REDIS_SOCKETS = POOL_SIZE
TX_MARKER_TTL_S = 600                # contract.redis_layout.TX_TTL_S: the expiring keys a write leaves


class SoakError(ValueError):
    """The samples cannot be judged (no baseline, no churn or no cool-down sample)."""


@dataclass(frozen=True)
class Verdict:
    name: str
    figure: float
    target: str
    met: bool

    def line(self) -> str:
        return f"{self.name}: {self.figure:g} (target {self.target}): {'met' if self.met else 'MISSED'}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def slope_per_10_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value units per 600 s (0 for < 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _v in points) / n
    mean_v = sum(v for _t, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _v in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600.0


def _value(sample: Sample, part: str, field: str) -> float | None:
    entry = sample.get(part)
    if not isinstance(entry, dict) or entry.get(field) is None:
        return None
    return float(entry[field])


def _series(samples: Sequence[Sample], part: str, field: str) -> list[tuple[float, float]]:
    return [(float(s["t"]), v) for s in samples if (v := _value(s, part, field)) is not None]


def second_half(samples: Sequence[Sample]) -> list[Sample]:
    churn = [s for s in samples if s["phase"] == "churn"]
    if not churn:
        return []
    middle = (churn[0]["t"] + churn[-1]["t"]) / 2
    return [s for s in churn if s["t"] >= middle]


def _last(samples: Sequence[Sample], phase: str, part: str, field: str) -> float | None:
    for s in reversed(samples):
        if s["phase"] == phase and (v := _value(s, part, field)) is not None:
            return v
    return None


def _phase_values(samples: Sequence[Sample], phase: str, part: str, field: str) -> list[float]:
    return [v for s in samples if s["phase"] == phase and (v := _value(s, part, field)) is not None]


def verdicts(samples: Sequence[Sample], rss: bool = True, write_rate: float = 0.0) -> list[Verdict]:
    """RSS growth per process over the churn's second half (when `rss`), the gateway's per-connection
    state at zero after the churn (its last sample), and fds, threads, tasks and Redis's persistent
    keys back at (or under) the baseline: some cool-down sample at or under the highest baseline
    sample (a count that flickers by one, such as an HTTP keep-alive socket, is not a leak; one that
    stays up is). Redis's expiring keys (the transactions' markers) are bounded by what
    `write_rate` leaves within their TTL."""
    phases = {s["phase"] for s in samples}
    missing = {"baseline", "churn", "cooldown"} - phases
    if missing:
        raise SoakError(f"no {', '.join(sorted(missing))} sample")
    found: list[Verdict] = []
    if rss:
        half = second_half(samples)
        for proc in PROCESSES:
            mb = [(t, kb / 1024) for t, kb in _series(half, proc, "rss_kb")]
            growth = round(slope_per_10_min(mb), 3)
            found.append(Verdict(f"{proc} RSS growth over the churn's second half, MB per 10 min", growth,
                                 f"<= {RSS_MB_PER_10_MIN:g}", growth <= RSS_MB_PER_10_MIN))
    for gauge in ZERO_AFTER_CHURN:
        end = _last(samples, "cooldown", "gateway", gauge)
        found.append(Verdict(f"gateway {gauge} after the churn", -1 if end is None else end, "0", end == 0))
    for part, field in BACK_TO_BASELINE:
        base = _phase_values(samples, "baseline", part, field)
        after = _phase_values(samples, "cooldown", part, field)
        if not base or not after:
            found.append(Verdict(f"{part} {field} after the churn (not sampled)", -1, "sampled", False))
            continue
        low, high = min(after), max(base)
        found.append(Verdict(f"{part} {field} after the churn (baseline {high:g})", low, f"<= {high:g}", low <= high))
    peak_sockets = max((v for s in samples if (v := _value(s, "gateway", "redis_sockets")) is not None), default=0.0)
    found.append(Verdict("gateway sockets to Redis, peak", peak_sockets, f"<= {GATEWAY_REDIS_SOCKETS} (its pool)",
                         peak_sockets <= GATEWAY_REDIS_SOCKETS))
    if write_rate:
        ratio = expiring_keys_ratio(samples, write_rate)
        found.append(Verdict("redis expiring keys (transaction markers) added since the baseline, worst ratio to "
                             "what the writes can leave (rate x min(elapsed, TTL))", ratio, "<= 1.1", ratio <= 1.1))
    return found


def sink_verdict(commits: int, batches: int) -> Verdict:
    """Every write is one released transaction, one ops record and one sink batch (POSTed at least once,
    counted once by its version): once the sink has caught up, fewer batches than commits means one was
    lost between the WAL and the receiver."""
    return Verdict("sink batches POSTed once it caught up (distinct versions), against the writes committed",
                   batches, f">= {commits}", batches >= commits)


def expiring_keys_ratio(samples: Sequence[Sample], write_rate: float) -> float:
    """Each write leaves one marker that expires after TX_MARKER_TTL_S, so after the baseline Redis can
    hold at most `write_rate` x min(elapsed, TTL) expiring keys more than it did: the worst ratio of the
    keys added to that bound (at or under 1: the markers expire as they should)."""
    base = [(float(s["t"]), v) for s in samples if s["phase"] == "baseline"
            and (v := _value(s, "redis", "expiring_keys")) is not None]
    if not base:
        return 0.0
    t0, v0 = base[-1]
    worst = 0.0
    for s in samples:
        v = _value(s, "redis", "expiring_keys")
        if v is None or float(s["t"]) <= t0 + 10:
            continue
        worst = max(worst, (v - v0) / (write_rate * min(float(s["t"]) - t0, TX_MARKER_TTL_S)))
    return round(worst, 3)

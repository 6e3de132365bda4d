"""bench/dbload.py's pure arithmetic: rates, freshness matched by WAL position, stale refetches, targets.

No I/O and no clock: tested in tests/unit/test_bench_dbload.py.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TARGET_PCT = 5.0   # the target: Freshwire costs Postgres <= 5 % CPU over the no-realtime baseline
CDC_GROUPS = ("walsender", "backend freshwire_cdc")   # Debezium's stream and its heartbeat/metadata queries
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


POLL_INTERVALS = {"polling-100ms": 0.1}   # arms with their own poll interval; "polling" takes --poll-interval


def poll_interval(arm: str, default: float) -> float:
    return POLL_INTERVALS.get(arm, default)


def per_1k(value: float, writes: int) -> float:
    return value * 1000 / writes if writes else 0.0


def pct_over(value: float, baseline: float) -> float:
    return (value / baseline - 1) * 100 if baseline else 0.0


@dataclass(frozen=True)
class Commit:
    card: int
    version: int    # the card's version column after the update
    wal: str        # the write token's message position, as a version: below this commit's end
    t: float        # time.time() right after COMMIT returned


@dataclass
class CommitIndex:
    """Commits in WAL order, to find the one an invalidation announces: a version lies between its
    transaction's token position and the next transaction's (latency.py's method)."""

    lows: list[str] = field(default_factory=list)
    cards: list[tuple[int, int]] = field(default_factory=list)   # (card, version) per commit

    def add(self, wal: str, card: int, version: int) -> None:
        if self.lows and wal <= self.lows[-1]:
            raise ValueError(f"commits out of WAL order: {wal} after {self.lows[-1]}")
        self.lows.append(wal)
        self.cards.append((card, version))

    def position(self, version: str) -> int:
        """Index of the commit whose window holds `version`, or -1 before the first."""
        return bisect.bisect_left(self.lows, version) - 1

    def expected(self, version: str, card: int) -> int | None:
        """The card version an invalidation at `version` announces, None when that commit (as far as
        known yet) changed another card."""
        i = self.position(version)
        return self.cards[i][1] if i >= 0 and self.cards[i][0] == card else None


def staleness(commits: Sequence[Commit], observations: Iterable[tuple[float, int, int]]) -> tuple[list[float], int]:
    """Seconds from each commit to the first read (t, card, version) of one client that shows it (or a
    later version), for the cards that client reads; and how many of those commits it never saw.
    A client's first read of a card is its starting point, not a sighting."""
    by_card: dict[int, list[Commit]] = defaultdict(list)
    for c in commits:
        by_card[c.card].append(c)
    seen: dict[int, int] = {}
    out: list[float] = []
    for t, card, version in sorted(observations):
        if card not in seen:
            seen[card] = version
            continue
        if version > seen[card]:
            out.extend(max(0.0, t - c.t) for c in by_card.get(card, []) if seen[card] < c.version <= version)
            seen[card] = version
    missed = sum(1 for card, cs in by_card.items() if card in seen for c in cs if c.version > seen[card])
    return out, missed


def receipt_latencies(commits: Sequence[Commit], end_wal: str, receipts: Iterable[tuple[float, str]]) -> list[float]:
    """Seconds from commit to receipt of an invalidation, matched by WAL position; receipts outside
    [first commit's token, end_wal) are not this arm's."""
    lows = [c.wal for c in commits] + [end_wal]
    out = []
    for t, version in receipts:
        i = bisect.bisect_left(lows, version) - 1
        if 0 <= i < len(commits):
            out.append(t - commits[i].t)
    return out


def stale_refetches(commits: Sequence[Commit], end_wal: str, refetches: Iterable[tuple[str, int, int]]) -> int:
    """Refetches (invalidation version, card, version read) that read the card older than the transaction
    the invalidation announced: the change was in the WAL, and released, before it was visible."""
    lows = [c.wal for c in commits] + [end_wal]
    stale = 0
    for version, card, got in refetches:
        i = bisect.bisect_left(lows, version) - 1
        stale += 0 <= i < len(commits) and commits[i].card == card and got < commits[i].version
    return stale


def read_cost_ms(arm: dict[str, Any], base_per_1k: float) -> float:
    """Postgres CPU ms per client read: the arm's CPU less CDC's, less the baseline's for as many
    writes, over the client reads. With it, another fan-out's cost is rate x viewers x this."""
    extra_s = arm["pg_cpu_s"] - arm["pg_cpu_cdc_s"] - base_per_1k * arm["writes"] / 1000
    return extra_s * 1000 / arm["client_queries"] if arm["client_queries"] else 0.0


def target_of(arm: dict[str, Any], base_per_1k: float, target_pct: float = TARGET_PCT) -> dict[str, Any]:
    """One Freshwire arm against the target: all of its Postgres CPU over the baseline, and the part of
    it that is CDC alone (walsender + Debezium's statements); the rest is the client reads (and noise)."""
    total = pct_over(arm["pg_cpu_s_per_1k_writes"], base_per_1k)
    cdc = arm["pg_cpu_cdc_s_per_1k_writes"] / base_per_1k * 100 if base_per_1k else 0.0
    return {"freshwire_cpu_over_baseline_pct": round(total, 1), "cdc_only_over_baseline_pct": round(cdc, 1),
            "reads_and_rest_over_baseline_pct": round(total - cdc, 1), "target_pct": target_pct,
            "met": total <= target_pct, "cdc_only_met": cdc <= target_pct}


def stacked_parts(per_1k_total: float, cdc: float, base: float) -> tuple[float, float, float]:
    """An arm's CPU per 1k writes as (baseline writes, reads and the rest, CDC) for a stacked bar;
    the middle part is floored at 0 (noise can put an arm's non-CDC part under the baseline)."""
    rest = per_1k_total - cdc
    return min(base, rest), max(0.0, rest - base), cdc


def publication_ddl(name: str, tables: Sequence[str] | None) -> str:
    """Re-create publication `name` in one transaction (so a walsender decoding across it always finds
    one): FOR ALL TABLES when `tables` is None, else FOR TABLE those."""
    for n in (name, *(tables or ())):
        if not TABLE_NAME.match(n):
            raise ValueError(f"not a plain lower-case table or publication name: {n!r}")
    if tables is not None and not tables:
        raise ValueError("a publication needs at least one table")
    target = "ALL TABLES" if tables is None else "TABLE " + ", ".join(tables)
    return f"BEGIN; DROP PUBLICATION IF EXISTS {name}; CREATE PUBLICATION {name} FOR {target}; COMMIT"

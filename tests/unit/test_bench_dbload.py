"""bench/dbload*.py's pure helpers: /proc parsing, CPU deltas, rates, freshness, targets, the shared cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bench.dbload_cache import SharedCache, VersionedEntries
from bench.dbload_clients import VERSION_COLUMN, ReadLog, refetch
from bench.dbload_metrics import (
    Commit,
    CommitIndex,
    pct_over,
    per_1k,
    poll_interval,
    publication_ddl,
    read_cost_ms,
    receipt_latencies,
    stacked_parts,
    stale_refetches,
    staleness,
    target_of,
)
from bench.dbload_pg import TreeSample, parse_stat, pg_group, tree_delta
from bench.dbload_sweep import core_sets, descendants, markdown_table, point_row

# A real backend's line, with spaces and parentheses in the command name.
STAT = ("4242 (postgres: app app 127.0.0.1(5) idle) S 3301 3301 3301 0 -1 4194368 1017 0 0 0 "
        "152 48 7 3 20 0 1 0 90123 225000000 3000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1")


def test_parse_stat_fields_14_to_17() -> None:
    st = parse_stat(STAT)
    assert (st.pid, st.ppid, st.ticks, st.child_ticks) == (4242, 3301, 152 + 48, 7 + 3)


@pytest.mark.parametrize(("title", "group"), [
    ("postgres: walsender freshwire_cdc 127.0.0.1(40000) START_REPLICATION", "walsender"),
    ("postgres: checkpointer ", "checkpointer"),
    ("postgres: autovacuum worker app", "autovacuum"),
    ("postgres: app app 127.0.0.1(5) idle", "backend app"),
    ("", "backend ?"),
])
def test_pg_group_names_the_child(title: str, group: str) -> None:
    assert pg_group(title) == group


def test_tree_delta_counts_new_running_and_exited_children() -> None:
    before = TreeSample(root_ticks=10, reaped_ticks=100, children={1: ("backend app", 50), 2: ("walsender", 5)})
    # pid 2 exited having spent 9 ticks in all (so 4 during the window); pid 3 is new.
    after = TreeSample(root_ticks=12, reaped_ticks=109, children={1: ("backend app", 80), 3: ("backend app", 6)})
    delta = tree_delta(before, after)
    assert delta == {"postmaster": 2, "backend app": 30 + 6, "exited": 4}
    # Equal to the plain formula: (live sum + reaped) after minus before.
    assert sum(delta.values()) == (12 + 80 + 6 + 109) - (10 + 50 + 5 + 100)


def test_rates() -> None:
    assert per_1k(3.0, 1500) == pytest.approx(2.0)
    assert per_1k(3.0, 0) == 0.0
    assert pct_over(1.05, 1.0) == pytest.approx(5.0)
    assert pct_over(1.0, 0.0) == 0.0


def test_staleness_first_read_that_shows_a_version_or_a_later_one() -> None:
    commits = [Commit(7, 2, "0000000000000100", 10.0), Commit(7, 3, "0000000000000200", 10.4),
               Commit(8, 5, "0000000000000300", 10.5), Commit(7, 4, "0000000000000400", 11.5)]
    reads = [(9.0, 7, 1), (9.0, 8, 4),            # starting points
             (10.2, 7, 1), (11.0, 7, 3),          # versions 2 and 3 seen at 11.0
             (11.0, 8, 5)]                        # version 4 of card 7 never seen
    got, missed = staleness(commits, reads)
    assert sorted(got) == pytest.approx([0.5, 0.6, 1.0])
    assert missed == 1


def test_staleness_ignores_cards_the_client_does_not_read() -> None:
    got, missed = staleness([Commit(9, 2, "0000000000000100", 1.0)], [(0.5, 7, 1), (2.0, 7, 1)])
    assert (got, missed) == ([], 0)


def test_receipt_latencies_match_by_wal_window() -> None:
    commits = [Commit(7, 2, "0000000000000100", 10.0), Commit(8, 5, "0000000000000200", 10.5)]
    receipts = [(10.02, "0000000000000180"),   # between the two tokens: the first commit
                (10.53, "0000000000000280"),   # after the second token, below the end: the second
                (10.9, "0000000000000900"),    # past the end position: not this arm's
                (9.0, "0000000000000050")]     # before the first: not this arm's
    assert receipt_latencies(commits, "0000000000000300", receipts) == pytest.approx([0.02, 0.03])


def test_read_cost_takes_out_cdc_and_the_baseline_writes() -> None:
    arm = {"pg_cpu_s": 5.0, "pg_cpu_cdc_s": 1.0, "writes": 2000, "client_queries": 4000}
    assert read_cost_ms(arm, base_per_1k=1.5) == pytest.approx((5.0 - 1.0 - 3.0) * 1000 / 4000)
    assert read_cost_ms({**arm, "client_queries": 0}, 1.5) == 0.0


def test_stale_refetches_counts_reads_older_than_the_announced_transaction() -> None:
    commits = [Commit(7, 2, "0000000000000100", 10.0), Commit(8, 5, "0000000000000200", 10.5)]
    refetches = [("0000000000000180", 7, 2),   # read what was announced
                 ("0000000000000180", 7, 1),   # announced version 2, read 1: not yet visible
                 ("0000000000000280", 8, 6),   # newer than announced: fine
                 ("0000000000000280", 7, 1),   # another card's transaction: not counted
                 ("0000000000000900", 8, 1)]   # outside the arm
    assert stale_refetches(commits, "0000000000000300", refetches) == 1


def test_commit_index_finds_the_announced_version_of_that_card() -> None:
    index = CommitIndex()
    index.add("0000000000000100", 7, 2)
    index.add("0000000000000200", 8, 5)
    assert index.expected("0000000000000180", 7) == 2   # first commit's window
    assert index.expected("0000000000000280", 8) == 5   # past the last known token: the last commit
    assert index.expected("0000000000000180", 8) is None   # that commit changed another card
    assert index.expected("0000000000000050", 7) is None   # before any commit


def test_commit_index_refuses_commits_out_of_wal_order() -> None:
    index = CommitIndex()
    index.add("0000000000000200", 7, 2)
    with pytest.raises(ValueError):
        index.add("0000000000000100", 8, 5)


def test_target_splits_cdc_from_reads() -> None:
    arm = {"pg_cpu_s_per_1k_writes": 0.70, "pg_cpu_cdc_s_per_1k_writes": 0.02}
    t = target_of(arm, base_per_1k=0.625)
    assert t["freshwire_cpu_over_baseline_pct"] == pytest.approx(12.0)
    assert t["cdc_only_over_baseline_pct"] == pytest.approx(3.2)
    assert t["reads_and_rest_over_baseline_pct"] == pytest.approx(8.8)
    assert (t["target_pct"], t["met"], t["cdc_only_met"]) == (5.0, False, True)
    assert target_of({**arm, "pg_cpu_s_per_1k_writes": 0.65}, 0.625)["met"] is True


def test_stacked_parts_floor_the_reads_at_zero() -> None:
    assert stacked_parts(1.0, 0.1, 0.6) == pytest.approx((0.6, 0.3, 0.1))
    assert stacked_parts(0.65, 0.1, 0.6) == pytest.approx((0.55, 0.0, 0.1))   # non-CDC part under the baseline


def test_publication_ddl_recreates_in_one_transaction() -> None:
    assert publication_ddl("freshwire_pub", None) == (
        "BEGIN; DROP PUBLICATION IF EXISTS freshwire_pub; CREATE PUBLICATION freshwire_pub FOR ALL TABLES; COMMIT")
    assert "FOR TABLE cards, public.outbox;" in publication_ddl("freshwire_pub", ["cards", "public.outbox"])


@pytest.mark.parametrize("tables", [["cards; DROP TABLE x"], ["Cards"], []])
def test_publication_ddl_refuses_odd_names(tables: list[str]) -> None:
    with pytest.raises(ValueError):
        publication_ddl("freshwire_pub", tables)


def test_versioned_entries_newer_answers_older_never_the_reverse() -> None:
    entries: VersionedEntries[str] = VersionedEntries()
    assert entries.put("k", "0000000000000200", "v2")
    assert entries.get("k", "0000000000000100") == "v2"   # an older request: the newer row will do
    assert entries.get("k", "0000000000000200") == "v2"
    assert entries.get("k", "0000000000000300") is None   # newer than held: read again
    assert not entries.put("k", "0000000000000100", "v1")   # a late older read does not replace it
    assert entries.get("k", "0000000000000200") == "v2"


def test_versioned_entries_drop_the_least_recently_used_key_at_the_limit() -> None:
    entries: VersionedEntries[int] = VersionedEntries(max_keys=2)
    entries.put("a", "1", 1)
    entries.put("b", "1", 2)
    entries.get("a", "1")          # a is now the most recently used
    entries.put("c", "1", 3)
    assert (entries.get("a", "1"), entries.get("b", "1"), entries.get("c", "1"), len(entries)) == (1, None, 3, 2)
    entries.discard("a", 99)       # not its entry: kept
    entries.discard("a", 1)
    assert entries.get("a", "1") is None


def test_shared_cache_reads_once_per_key_version_however_many_ask() -> None:
    calls: list[tuple[str, str]] = []

    async def load(key: str, version: str) -> str:
        calls.append((key, version))
        await asyncio.sleep(0.01)
        return f"{key}@{version}"

    async def scenario() -> list[str]:
        cache: SharedCache[str] = SharedCache(load)
        first = await asyncio.gather(*(cache.get("card:1", "0000000000000100") for _ in range(5)))
        again = await cache.get("card:1", "0000000000000100")
        newer = await cache.get("card:1", "0000000000000200")
        assert (cache.loads, cache.hits) == (2, 5)
        return [*first, again, newer]

    got = asyncio.run(scenario())
    assert calls == [("card:1", "0000000000000100"), ("card:1", "0000000000000200")]
    assert got == ["card:1@0000000000000100"] * 6 + ["card:1@0000000000000200"]


def test_shared_cache_forgets_a_failed_read() -> None:
    attempts = []

    async def load(key: str, version: str) -> str:
        attempts.append(version)
        if len(attempts) == 1:
            raise OSError("connection lost")
        return "row"

    async def scenario() -> str:
        cache: SharedCache[str] = SharedCache(load)
        with pytest.raises(OSError):
            await cache.get("k", "0000000000000100")
        return await cache.get("k", "0000000000000100")

    assert asyncio.run(scenario()) == "row"
    assert len(attempts) == 2


class FakeConn:
    """Answers CARD_SQL with the next of `versions` (one row, the version in column VERSION_COLUMN)."""

    def __init__(self, versions: list[int]) -> None:
        self.versions = versions

    async def execute(self, _sql: str, params: tuple[int]) -> FakeConn:
        self.row = (params[0], 0, 0, "", "", "", self.versions.pop(0), 0)
        return self

    async def fetchall(self) -> list[tuple[object, ...]]:
        return [self.row]


@pytest.mark.parametrize(("versions", "got", "retried", "still_stale"), [
    ([3], 3, 0, 0),        # the announced version at once
    ([4], 4, 0, 0),        # newer: fine
    ([2, 3], 3, 1, 0),     # older than announced, the retry sees it
    ([2, 2], 2, 1, 1),     # older twice
])
def test_refetch_retries_once_when_older_than_announced(versions: list[int], got: int, retried: int,
                                                        still_stale: int) -> None:
    index = CommitIndex()
    index.add("0000000000000100", 7, 3)
    log = ReadLog()
    row = asyncio.run(refetch(FakeConn(list(versions)), 7, "0000000000000180", index, log))  # type: ignore[arg-type]
    assert row is not None and row[VERSION_COLUMN] == got
    assert (log.retried, log.stale_after_retry, len(log.queries)) == (retried, still_stale, 1 + retried)
    assert log.refetches == [("0000000000000180", 7, versions[0])]   # the first read, for the stale count


def test_poll_interval_per_arm() -> None:
    assert poll_interval("polling-100ms", 1.0) == pytest.approx(0.1)
    assert poll_interval("polling", 2.5) == pytest.approx(2.5)


def test_descendants_walks_the_whole_tree() -> None:
    parent = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert descendants(10, parent) == {11, 12, 13}
    assert descendants(21, parent) == set()


def test_core_sets_pin_postgres_alone() -> None:
    assert core_sets("pinned", 2) == ({0}, {1})
    assert core_sets("pinned", 4) == ({0}, {1, 2, 3})
    assert core_sets("shared", 2) == ({0, 1}, {0, 1})
    assert core_sets("pinned", 1) == ({0}, {0})   # one core: nothing to pin
    with pytest.raises(ValueError):
        core_sets("other", 2)


def _arm(name: str, cpu: float, cdc: float = 0.0, fresh: tuple[float, float] | None = None) -> dict[str, Any]:
    a: dict[str, Any] = {"arm": name, "pg_cpu_s_per_1k_writes": cpu, "pg_cpu_cdc_s_per_1k_writes": cdc,
                         "pg_cpu_s": cpu, "pg_cpu_cdc_s": cdc, "writes": 1000, "client_queries": 0,
                         "statements": {"calls": 7000}, "machine_busy_pct": 50.0, "client_errors": []}
    if fresh is not None:
        a["freshness_ms"] = {"commit_to_read": {"p50": fresh[0], "p99": fresh[1]}}
    return a


def test_point_row_and_table_put_pinned_beside_shared() -> None:
    pinned = point_row([_arm("baseline", 0.8), _arm("freshwire-pushed", 0.9, 0.1, (10.0, 20.0))])
    assert pinned["freshwire-pushed"]["over_baseline_s_per_1k"] == pytest.approx(0.1)
    assert pinned["freshwire-pushed"]["over_baseline_pct"] == pytest.approx(12.5)
    shared = point_row([_arm("baseline", 1.0), _arm("freshwire-pushed", 1.3, 0.2, (12.0, 30.0))])
    table = markdown_table([{"clients": 100, "mode": "pinned", "summary": pinned},
                            {"clients": 100, "mode": "shared", "summary": shared}])
    row = next(line for line in table.splitlines() if "pushed" in line)
    assert "0.900 (+0.100, +12.5 %)" in row and "1.300 (+0.300, +30.0 %)" in row
    assert "0.100 / 0.200" in row and "10.0 / 20.0" in row and "12.0 / 30.0" in row
    assert "not run" in next(line for line in table.splitlines() if "every 1 s" in line)

"""bench/dbload.py's output: one arm's numbers from its snapshots and logs, the table, the PNG."""

from __future__ import annotations

import argparse
from typing import Any

from bench import report
from bench.dbload_clients import ArmResult
from bench.dbload_metrics import (
    CDC_GROUPS,
    TARGET_PCT,
    Commit,
    pct_over,
    per_1k,
    poll_interval,
    receipt_latencies,
    stacked_parts,
    stale_refetches,
    staleness,
)
from bench.dbload_pg import CLK_TCK, Snapshot, tree_delta

BUSY_WARN_PCT = 90


def summarize(name: str, args: argparse.Namespace, commits: list[Commit], end_wal: str, before: Snapshot,
              after: Snapshot, stmts: dict[str, Any], result: ArmResult | None) -> dict[str, Any]:
    groups = tree_delta(before.tree, after.tree)
    pg_s = sum(groups.values()) / CLK_TCK
    cdc_s = sum(groups.get(g, 0) for g in CDC_GROUPS) / CLK_TCK
    # Sessions only: less noisy than the whole tree, which has autovacuum workers (that start and exit,
    # so land in 'exited') and the checkpointer, whose bursts fall unevenly into arms.
    sessions_s = sum(t for g, t in groups.items() if g.startswith("backend ") or g == "walsender") / CLK_TCK
    busy, total = (a - b for a, b in zip(after.machine, before.machine, strict=True))
    elapsed = after.t - before.t
    wal = [a - b for a, b in zip(after.wal_stats, before.wal_stats, strict=True)]
    queries = sum(1 for q in result.reads.queries if before.t <= q <= after.t) if result else 0
    out: dict[str, Any] = {
        "arm": name, "writes": len(commits), "seconds": round(elapsed, 2),
        "tx_per_s": round(len(commits) / elapsed, 1),
        "pg_cpu_s": round(pg_s, 2), "pg_cpu_s_per_1k_writes": round(per_1k(pg_s, len(commits)), 3),
        "pg_cpu_cdc_s": round(cdc_s, 2), "pg_cpu_cdc_s_per_1k_writes": round(per_1k(cdc_s, len(commits)), 3),
        "pg_cpu_sessions_s_per_1k_writes": round(per_1k(sessions_s, len(commits)), 3),
        "pg_cpu_by_process": {g: round(t / CLK_TCK, 2) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
        "statements": stmts,
        "wal_bytes": after.wal_lsn - before.wal_lsn, "wal_records": wal[0], "wal_fpi": wal[1],
        "walsenders": [before.walsenders, after.walsenders],
        "process_cpu_s": {n: round((after.procs[n] - before.procs.get(n, 0)) / CLK_TCK, 2) for n in after.procs},
        "machine_busy_pct": round(100 * busy / total, 1) if total else 0.0,
        "machine_cpu_s": round(busy / CLK_TCK, 2),
        "client_queries": queries,
        "client_reads_per_write": round(queries / len(commits), 3) if commits else 0.0,
        "client_errors": [log.error for log in result.clients if log.error][:5] if result else [],
    }
    if result is not None:
        out["freshness_ms"] = freshness(name, args, commits, end_wal, result)
    return out


def freshness(name: str, args: argparse.Namespace, commits: list[Commit], end_wal: str,
              result: ArmResult) -> dict[str, Any]:
    stale: list[float] = []
    missed = 0
    receipts: list[float] = []
    for log in result.clients:
        got, lost = staleness(commits, log.reads)
        stale += got
        missed += lost
        receipts += receipt_latencies(commits, end_wal, log.receipts)
    fresh: dict[str, Any] = {"commit_to_read": report.summary([x * 1000 for x in stale]), "unseen": missed}
    if name.startswith("polling"):
        fresh["expected_mean"] = poll_interval(name, args.poll_interval) / 2 * 1000
        return fresh
    reads = result.reads
    fresh["commit_to_invalidation"] = report.summary([x * 1000 for x in receipts])
    fresh["refetch_older_than_invalidation"] = stale_refetches(commits, end_wal, reads.refetches)
    fresh["refetch_retried"] = reads.retried
    fresh["refetch_stale_after_retry"] = reads.stale_after_retry
    if reads.pushed_rows or reads.pushed_fallbacks:
        fresh["pushed"] = {"rows_applied": reads.pushed_rows, "refetched_without_data": reads.pushed_fallbacks}
    if reads.cache_loads or reads.cache_hits:
        fresh["cache"] = {"loads": reads.cache_loads, "hits": reads.cache_hits}
    return fresh


# ---------------------------------------------------------------- the table

def _fresh_text(f: dict[str, Any]) -> str:
    if not f:
        return "-"
    text = f"{f['commit_to_read']['p50']:.1f} / {f['commit_to_read']['p99']:.1f}"
    if "commit_to_invalidation" in f:
        text += f"  (inval {f['commit_to_invalidation']['p50']:.1f} / {f['commit_to_invalidation']['p99']:.1f})"
    if "expected_mean" in f:
        text += f"  (mean {f['commit_to_read']['mean']:.1f}, expected T/2 {f['expected_mean']:.0f})"
    if f.get("unseen"):
        text += f"  {f['unseen']} commits never seen"
    return text


def print_table(arms: list[dict[str, Any]], targets: dict[str, dict[str, Any]]) -> None:
    base = arms[0]["pg_cpu_s_per_1k_writes"]
    sess_base = arms[0]["pg_cpu_sessions_s_per_1k_writes"]
    print(f"\n{'arm':<17} {'writes':>6} {'PG cpu s':>8} {'s/1k wr':>8} {'vs base':>8} {'CDC':>7} {'sess.':>7} "
          f"{'reads':>6} {'rd/wr':>5} {'WAL MB':>7} {'busy%':>5}  freshness commit->read p50 / p99 ms")
    for a in arms:
        cdc = f"{a['pg_cpu_cdc_s_per_1k_writes'] / base * 100:+.1f}%" if base and a["pg_cpu_cdc_s"] else "-"
        print(f"{a['arm']:<17} {a['writes']:>6} {a['pg_cpu_s']:>8.2f} {a['pg_cpu_s_per_1k_writes']:>8.3f} "
              f"{pct_over(a['pg_cpu_s_per_1k_writes'], base):>+7.1f}% {cdc:>7} "
              f"{pct_over(a['pg_cpu_sessions_s_per_1k_writes'], sess_base):>+6.1f}% {a['client_queries']:>6} "
              f"{a['client_reads_per_write']:>5.2f} {a['wal_bytes'] / 1e6:>7.2f} {a['machine_busy_pct']:>5.1f}  "
              f"{_fresh_text(a.get('freshness_ms', {}))}")
    for name, t in targets.items():
        f = next(a for a in arms if a["arm"] == name)["freshness_ms"]
        print(f"{name}: {t['freshwire_cpu_over_baseline_pct']:+.1f}% over baseline (CDC alone "
              f"{t['cdc_only_over_baseline_pct']:+.1f}%, reads and rest {t['reads_and_rest_over_baseline_pct']:+.1f}%)"
              f" vs target {t['target_pct']:g}%: {'met' if t['met'] else 'NOT met'}; refetches older than announced "
              f"{f['refetch_older_than_invalidation']} (retried {f['refetch_retried']}, still stale after retry "
              f"{f['refetch_stale_after_retry']}){'; cache ' + str(f['cache']) if 'cache' in f else ''}")
    for a in arms[1:]:
        print(f"{a['arm']}: {a['client_queries']} client reads, {a.get('pg_cpu_ms_per_client_read', 0):.3f} ms "
              f"PG CPU each")
    for a in arms:
        if a["client_errors"]:
            print(f"{a['arm']}: CLIENT ERRORS {a['client_errors']}")
        if a["machine_busy_pct"] > BUSY_WARN_PCT:
            print(f"{a['arm']}: the machine was {a['machine_busy_pct']}% busy: CPU contention (see process_cpu_s)")
    for a in arms:
        print(f"\n{a['arm']}: PG CPU s by process {a['pg_cpu_by_process']}; walsenders {a['walsenders']}")
        print(f"  process CPU s {a['process_cpu_s']}")
        for st in a["statements"]["top"]:
            print(f"  {st['calls']:>7} calls {st['total_ms']:>9.1f} ms  {st['role']:<13} {st['query']}")
        for st in a["statements"]["freshwire_cdc"]:
            print(f"  {st['calls']:>7} calls {st['total_ms']:>9.1f} ms  {'freshwire_cdc':<13} {st['query']}")


# ---------------------------------------------------------------- the figure

COLORS = {"base": "#888888", "reads": "#d9822b", "cdc": "#1b3f73"}


def plot(arms: list[dict[str, Any]], args: argparse.Namespace, name: str) -> None:
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    fig.suptitle(f"{args.rate:g} writes/s, {args.clients} clients ({args.clients / args.boards:g} per board), "
                 f"poll every {args.poll_interval:g} s, {args.seconds:g} s per arm", fontsize=10)
    names = [a["arm"] for a in arms]
    base = arms[0]["pg_cpu_s_per_1k_writes"]
    parts = [stacked_parts(a["pg_cpu_s_per_1k_writes"], a["pg_cpu_cdc_s_per_1k_writes"], base) for a in arms]
    bottoms = [0.0] * len(arms)
    for i, (label, color) in enumerate((("writes (baseline's share)", COLORS["base"]),
                                        ("client reads and the rest", COLORS["reads"]),
                                        ("CDC alone: walsender + Debezium's queries", COLORS["cdc"]))):
        heights = [p[i] for p in parts]
        left.bar(names, heights, bottom=bottoms, color=color, label=label)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    left.axhline(base * (1 + TARGET_PCT / 100), color="#c0392b", linestyle="--", linewidth=1,
                 label=f"target: baseline + {TARGET_PCT:g}%")
    for x, (a, top) in enumerate(zip(arms, bottoms, strict=True)):
        v = a["pg_cpu_s_per_1k_writes"]
        cdc = f"\nCDC {a['pg_cpu_cdc_s_per_1k_writes'] / base * 100:+.1f}%" if a["pg_cpu_cdc_s"] and base else ""
        left.annotate(f"{v:.3f} s ({pct_over(v, base):+.1f}%){cdc}", (x, max(top, v)), ha="center", va="bottom",
                      fontsize=8)
    left.set_ylim(0, max(bottoms) * 1.25)
    left.legend(fontsize=7, loc="upper left")
    left.tick_params(axis="x", labelsize=8)
    left.set_ylabel("Postgres CPU s per 1k writes")
    left.set_title("Database CPU by part (from /proc)", fontsize=10)
    fresh = [a for a in arms if "freshness_ms" in a]
    xs = range(len(fresh))
    for offset, q in ((-0.2, "p50"), (0.2, "p99")):
        right.bar([x + offset for x in xs], [a["freshness_ms"]["commit_to_read"][q] for a in fresh],
                  width=0.4, label=f"commit → read {q}")
    right.axhline(args.poll_interval / 2 * 1000, color="#d9822b", linestyle="--", label="polling: T/2 expected")
    right.set_xticks(list(xs), [a["arm"] for a in fresh], fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("ms (log)")
    right.set_title("Freshness: commit → client holds the new row", fontsize=10)
    right.legend(fontsize=7)
    report.save_figure(fig, name)

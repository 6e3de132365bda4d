"""Issue #14's database-load sweep: Postgres CPU against the number of dashboards, per arm, pinned and shared.

    .venv/bin/python -m bench.dbload_sweep [--counts 10,100,1000] [--seconds 30] [--modes pinned,shared]
    (eval "$(grep ^export bench/dbload.sh)"; .venv/bin/python -m bench.dbload_sweep [flags])   # on
    bench/dbload.sh's private stack (own ports and state dir); `make bench-dbload` runs it on the default one

For each dashboard count C and each core mode, bench/dbload.py's run_arms with the arms
baseline, polling (every 1 s), polling-100ms, freshwire-cached (refetch through a (key, version) cache)
and freshwire-pushed (the rows come in the invalidate's `data`; a key without data is refetched
through the same cache), at --rate writes/s of the demo's write transaction.

Core modes (`sched_setaffinity` on every thread, the same as `taskset -a -p`):
- pinned: the postmaster and all its children (so every backend and walsender it forks later) on
  core 0; everything else of this stack (Kafka, Connect, Redis, the cdc consumer, the gateway, this
  process: the writer, and the client processes it spawns) on core 1. Postgres's CPU then measures
  Postgres's work rather than its waiting for a core the JVMs hold. Processes not of this stack (a
  concurrent CI run, say) are not pinned.
- shared: every process of the stack on both cores (the earlier benchmark's setting).

Clients: C dashboards in one client process per arm (asyncio); polling clients share at most
POLL_CONNECTIONS connections (Postgres' max_connections is 100), freshwire clients one WebSocket each
and one shared connection for the cache. Results after each point to bench/results/<--out>.json (so an
interrupted sweep keeps what it measured), the plot to <--out>.png, a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

from bench import report
from bench.dbload import add_config_flags, run_arms
from bench.dbload_metrics import pct_over, read_cost_ms
from bench.dbload_pg import CLK_TCK
from connectors import procs, stack
from connectors.stack_settings import StackSettings, load_stack_settings

SWEEP_ARMS = ["baseline", "polling", "polling-100ms", "freshwire-cached", "freshwire-pushed"]
LABELS = {"baseline": "no realtime", "polling": "polling every 1 s", "polling-100ms": "polling every 100 ms",
          "freshwire-cached": "Freshwire, refetch via (key, version) cache",
          "freshwire-pushed": "Freshwire, pushed rows"}
RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------- pinning

def children_of(root: int) -> set[int]:
    """Every descendant of `root` (from /proc's ppid fields)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return descendants(root, parent)


def descendants(root: int, parent: dict[int, int]) -> set[int]:
    """Pure: the pids under `root` in a pid -> ppid map."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        kids.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def set_affinity(pid: int, cpus: set[int]) -> int:
    """All threads of `pid` onto `cpus` (taskset -a -p); the number of threads moved."""
    moved = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return 0
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            moved += 1
        except OSError:
            pass
    return moved


def core_sets(mode: str, ncpu: int) -> tuple[set[int], set[int]]:
    """(Postgres's cores, everything else's) for a mode."""
    every = set(range(ncpu))
    if mode == "shared" or ncpu < 2:
        return every, every
    if mode != "pinned":
        raise ValueError(f"unknown core mode {mode!r}")
    return {0}, every - {0}


def pin(s: StackSettings, mode: str) -> dict[str, Any]:
    """Put the stack's processes on their cores for `mode`; what was moved, for the record."""
    pg_cpus, other_cpus = core_sets(mode, os.cpu_count() or 1)
    root = procs.recorded_pid(s.pids_dir, "postgres")
    if root is None:
        raise RuntimeError("postgres is not running")
    pg = {root} | children_of(root)
    others = {os.getpid()}
    for name, pid in stack.running_parts(s).items():
        if name != "postgres":
            others |= {pid} | children_of(pid)
    others -= pg
    threads_pg = sum(set_affinity(p, pg_cpus) for p in pg)
    threads_other = sum(set_affinity(p, other_cpus) for p in others)
    return {"mode": mode, "postgres_cpus": sorted(pg_cpus), "other_cpus": sorted(other_cpus),
            "postgres_processes": len(pg), "postgres_threads": threads_pg, "other_processes": len(others),
            "other_threads": threads_other}


# ---------------------------------------------------------------- the summary

def point_row(arms: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One (count, mode) point: per arm the figures the table and the plot use."""
    base = arms[0]["pg_cpu_s_per_1k_writes"]
    out = {}
    for a in arms:
        f = a.get("freshness_ms", {})
        out[a["arm"]] = {
            "pg_cpu_s_per_1k_writes": a["pg_cpu_s_per_1k_writes"],
            "over_baseline_s_per_1k": round(a["pg_cpu_s_per_1k_writes"] - base, 3),
            "over_baseline_pct": round(pct_over(a["pg_cpu_s_per_1k_writes"], base), 1),
            "cdc_s_per_1k_writes": a["pg_cpu_cdc_s_per_1k_writes"],
            "statements": a["statements"]["calls"], "client_reads": a["client_queries"],
            "writes": a["writes"], "machine_busy_pct": a["machine_busy_pct"],
            "pg_cpu_ms_per_client_read": round(read_cost_ms(a, base), 4) if a is not arms[0] else 0.0,
            "fresh_p50_ms": f.get("commit_to_read", {}).get("p50"),
            "fresh_p99_ms": f.get("commit_to_read", {}).get("p99"),
            "pushed": f.get("pushed"), "cache": f.get("cache"), "client_errors": a["client_errors"],
        }
    return out


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def markdown_table(points: list[dict[str, Any]]) -> str:
    """Rows arm x count; pinned and shared side by side."""
    by = {(p["clients"], p["mode"]): p["summary"] for p in points}
    counts = sorted({p["clients"] for p in points})
    lines = ["| dashboards | arm | PG CPU s / 1k writes, pinned (over baseline) | shared (over baseline) | "
             "CDC share s / 1k, pinned / shared | statements, pinned | freshness p50 / p99 ms, pinned | "
             "freshness p50 / p99 ms, shared |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in counts:
        for arm in SWEEP_ARMS:
            cells = []
            for mode in ("pinned", "shared"):
                r = by.get((c, mode), {}).get(arm)
                cells.append(None if r is None else r)
            pin_r, sh_r = cells

            def cpu(r: dict[str, Any] | None, base: bool = arm == "baseline") -> str:
                if r is None:
                    return "not run"
                over = "" if base else f" ({r['over_baseline_s_per_1k']:+.3f}, {r['over_baseline_pct']:+.1f} %)"
                return f"{r['pg_cpu_s_per_1k_writes']:.3f}{over}"

            def fresh(r: dict[str, Any] | None) -> str:
                if r is None or r["fresh_p50_ms"] is None:
                    return "—"
                return f"{r['fresh_p50_ms']:.1f} / {r['fresh_p99_ms']:.1f}"

            cdc = " / ".join("—" if r is None or not r["cdc_s_per_1k_writes"] else f"{r['cdc_s_per_1k_writes']:.3f}"
                             for r in (pin_r, sh_r))
            stmts = "—" if pin_r is None else f"{pin_r['statements']:,}"
            lines.append(f"| {c:,} | {LABELS[arm]} | {cpu(pin_r)} | {cpu(sh_r)} | {cdc} | {stmts} | {fresh(pin_r)} | "
                         f"{fresh(sh_r)} |")
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], name: str, title: str) -> None:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = {"baseline": "#888888", "polling": "#d9822b", "polling-100ms": "#c0392b",
              "freshwire-cached": "#2e86c1", "freshwire-pushed": "#1b3f73"}
    for mode, style in (("pinned", "-"), ("shared", ":")):
        for arm in SWEEP_ARMS:
            xs = sorted(p["clients"] for p in points if p["mode"] == mode and arm in p["summary"])
            if not xs:
                continue
            by = {p["clients"]: p["summary"][arm] for p in points if p["mode"] == mode and arm in p["summary"]}
            ax.plot(xs, [by[x]["pg_cpu_s_per_1k_writes"] for x in xs], style, marker="o", color=colors[arm],
                    label=f"{LABELS[arm]} ({mode})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dashboards")
    ax.set_ylabel("Postgres CPU s per 1k writes (log)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    report.save_figure(fig, name)


def write(name: str, meta: dict[str, Any], points: list[dict[str, Any]]) -> None:
    report.write_json(name, meta | {"points": points})


# ---------------------------------------------------------------- the run

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=lambda v: [int(x) for x in v.split(",")], default=[10, 100, 1000])
    p.add_argument("--modes", type=lambda v: v.split(","), default=["pinned", "shared"])
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each arm")
    p.add_argument("--boards", type=int, default=10)
    p.add_argument("--cards-per-board", type=int, default=20)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--arms", type=lambda v: v.split(","), default=SWEEP_ARMS)
    add_config_flags(p)
    p.add_argument("--out", default="dbload-sweep")
    p.add_argument("--plot-only", action="store_true", help="table and plot from bench/results/<out>.json")
    args = p.parse_args()
    if any(m not in ("pinned", "shared") for m in args.modes):
        p.error("--modes: pinned, shared")
    return args


def run_args(args: argparse.Namespace, clients: int) -> argparse.Namespace:
    """bench/dbload.py's flags for one point."""
    return argparse.Namespace(rate=args.rate, clients=clients, poll_interval=1.0, seconds=args.seconds,
                              boards=args.boards, cards_per_board=args.cards_per_board, warmup=args.warmup,
                              arms=args.arms, publication_tables=None, heartbeat_ms=None, out=args.out,
                              connector_config=args.connector_config, replica_identity=args.replica_identity)


def main() -> None:
    args = parse_args()
    def title_of(rate: float, seconds: float) -> str:
        return (f"Postgres CPU per 1k writes against dashboards ({rate:g} writes/s, {seconds:g} s per arm)\n"
                "solid: Postgres pinned to its own core, the rest on the other; dotted: all on 2 shared cores")

    title = title_of(args.rate, args.seconds)
    if args.plot_only:
        doc = json.loads((RESULTS / f"{args.out}.json").read_text())
        saved: list[dict[str, Any]] = doc["points"]
        print(markdown_table(saved))
        plot(saved, args.out, title_of(doc["settings"]["rate"], doc["settings"]["seconds"]))
        return
    budget = int(len(args.counts) * len(args.modes) * len(args.arms) * (args.seconds + 90) + 600)

    def watchdog(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"dbload_sweep: over its {budget}s budget")

    signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(budget)
    s = load_stack_settings()
    started = stack.up(s, with_apps=False, quiet=True)
    meta = {"machine": report.machine_info(), "settings": {k: v for k, v in vars(args).items() if k != "plot_only"},
            "stack": {"pg_port": s.pg_port, "state_dir": str(s.state_dir), "clk_tck": CLK_TCK}}
    points: list[dict[str, Any]] = []
    try:
        for clients in args.counts:
            for mode in args.modes:
                pinning = pin(s, mode)
                print(f"== {clients} dashboards, {mode}: {pinning}", flush=True)
                experiments: dict[str, Any] = {}
                try:
                    arms = run_arms(s, run_args(args, clients), started, experiments)
                except Exception as exc:   # one point failing leaves the others
                    print(f"{clients} dashboards, {mode}: FAILED {type(exc).__name__}: {exc}", flush=True)
                    points.append({"clients": clients, "mode": mode, "pinning": pinning, "summary": {},
                                   "arms": [], "error": f"{type(exc).__name__}: {exc}"[:300]})
                    write(args.out, meta, points)
                    continue
                pin(s, mode)   # the apps run_arms started inherit this process's cores; re-pin anyway
                points.append({"clients": clients, "mode": mode, "pinning": pinning, "summary": point_row(arms),
                               "experiments": experiments, "arms": arms})
                write(args.out, meta, points)
                print(markdown_table(points), flush=True)
    finally:
        try:
            pin(s, "shared")
        except Exception as exc:
            print(f"could not unpin: {exc}")
        stack.down(s, only=started, quiet=True)
        signal.alarm(0)
    print(markdown_table(points))
    plot(points, args.out, title)


if __name__ == "__main__":
    main()

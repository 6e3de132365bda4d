"""Cost at rest and cost per transaction (issue #15): CPU of each process of the stack, idle and under
a fixed write rate.

    .venv/bin/python -m bench.idle [--idle-seconds 30] [--rate 200] [--load-seconds 30] [--settle 20]
                                   [--set poll.interval.ms=20 ...] [--name idle]

Against the stack the FRESHWIRE_* variables name (started here if none runs, and then stopped again):

1. load: one-row transactions at `--rate` tx/s for `--load-seconds` s (bench/latency.py's writers),
   then one probe transaction waited for end to end, so the window holds all the work of the load;
   CPU-s per 1,000 transactions per process, gross and net of the idle rate over the same window.
   It comes first because it also warms the JVMs up: a JVM that has just started, or has just seen
   its first load, compiles for minutes, and that is not rest;
2. settle: `--settle` s of nothing;
3. idle: `--idle-seconds` s with no writes; each process's CPU (utime + stime from /proc, its children
   included: PostgreSQL's backends and walsender) as a percentage of one core, and the JVMs' busiest
   threads (/proc/<pid>/task/*, by thread name), which say where the idle CPU goes.

`--set key=value` runs it all with a connector setting changed (the connector is put back after).

CPU time is per process, so it stays meaningful on a shared machine; the machine's busy time beside
it says how shared it was. Prints a table with the targets beside the figures and writes
bench/results/idle.json.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import latency
from bench.procfs import CLK_TCK, JVM_ROLES, descendants, jit_share, machine_ticks, read_text, stat_fields, thread_ticks
from bench.report import machine_info, write_json
from connectors import register, stack
from connectors.stack_settings import StackSettings, load_stack_settings

IDLE_TARGET_PCT = 5.0  # the whole stack at rest, % of one core (issue #15)
TOP_THREADS = 8


def tree_ticks(own: str, children: list[str]) -> int:
    """Pure: CPU ticks of a process and its live children, reaped children included (cutime, cstime):
    a backend that exited during the window was reaped by the postmaster, so it still counts."""
    f = stat_fields(own)
    total = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    for child in children:
        c = stat_fields(child)
        total += int(c[11]) + int(c[12]) + int(c[13]) + int(c[14])
    return total


def process_seconds(pid: int) -> float:
    own = read_text(f"/proc/{pid}/stat")
    if own is None:
        return 0.0
    children = [s for c in descendants(pid) if (s := read_text(f"/proc/{c}/stat")) is not None]
    return tree_ticks(own, children) / CLK_TCK


def busiest(before: dict[str, int], after: dict[str, int], wall_s: float, top: int = TOP_THREADS
            ) -> list[tuple[str, float]]:
    """Pure: the `top` threads by CPU over the window, as % of one core (threads named alike summed:
    Kafka's data-plane-kafka-request-handler-0..7 are one line)."""
    by_name: Counter[str] = Counter()
    for key, ticks in after.items():
        name = key.rsplit(" (", 1)[0].rstrip("-0123456789")
        by_name[name] += ticks - before.get(key, 0)
    return [(name, round(100 * ticks / CLK_TCK / wall_s, 2)) for name, ticks in by_name.most_common(top) if ticks]


def measure(roles: dict[str, int], seconds: float, threads: bool = False) -> dict[str, Any]:
    """Each role's CPU seconds over `seconds` of wall time (the caller does what it wants meanwhile:
    this only samples before and after)."""
    before = {r: process_seconds(p) for r, p in roles.items()}
    tbefore = {r: thread_ticks(roles[r]) for r in JVM_ROLES if r in roles} if threads else {}
    m0 = machine_ticks(Path("/proc/stat").read_text())
    start = time.monotonic()
    time.sleep(seconds)
    return finish(roles, before, tbefore, m0, start)


def finish(roles: dict[str, int], before: dict[str, float], tbefore: dict[str, dict[str, int]],
           m0: tuple[int, int], start: float) -> dict[str, Any]:
    wall = time.monotonic() - start
    used = {r: round(process_seconds(p) - before[r], 3) for r, p in roles.items()}
    m1 = machine_ticks(Path("/proc/stat").read_text())
    out: dict[str, Any] = {"wall_s": round(wall, 2), "cpu_s": used,
                           "machine_busy_pct_of_core": round(100 * (m1[0] - m0[0]) / CLK_TCK / wall, 1)}
    if tbefore:
        tafter = {r: thread_ticks(roles[r]) for r in tbefore}
        out["threads_pct_of_core"] = {r: busiest(tbefore[r], tafter[r], wall) for r in tbefore}
        out["jit_pct_of_core"] = {r: jit_share(tbefore[r], tafter[r], wall) for r in tbefore}
    return out


def pct(cpu_s: float, wall_s: float) -> float:
    return round(100 * cpu_s / wall_s, 2)


def load_phase(s: StackSettings, roles: dict[str, int], rate: float, seconds: float) -> dict[str, Any]:
    """Writes at `rate` for `seconds`, then a probe through to Redis pubsub: every transaction's work is
    inside the window."""
    ids = latency.cards(s)
    latency.probe(s, ids[0])
    before = {r: process_seconds(p) for r, p in roles.items()}
    m0 = machine_ticks(Path("/proc/stat").read_text())
    start = time.monotonic()
    commits: dict[str, float] = {}
    latency.write_all(s, ids, rate, seconds, commits)
    latency.probe(s, ids[0])
    out = finish(roles, before, {}, m0, start)
    out["transactions"] = len(commits) + 1
    return out


def per_1k(load: dict[str, Any], idle: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Pure: CPU-s per 1,000 transactions per role, gross and net of that role's idle rate."""
    n, wall = load["transactions"], load["wall_s"]
    out: dict[str, dict[str, float]] = {}
    for role, cpu in load["cpu_s"].items():
        idle_rate = idle["cpu_s"].get(role, 0.0) / idle["wall_s"]
        out[role] = {"gross": round(1000 * cpu / n, 3), "net": round(1000 * max(0.0, cpu - idle_rate * wall) / n, 3)}
    return out


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "missed"


def report(idle: dict[str, Any], load: dict[str, Any] | None, rate: float) -> list[str]:
    """Pure: the printed table."""
    costs = per_1k(load, idle) if load else {}
    lines = [f"{'process':<10} {'idle % core':>12} {'CPU-s/1k tx':>12} {'net of idle':>12}"]
    for role, cpu in idle["cpu_s"].items():
        c = costs.get(role, {"gross": float("nan"), "net": float("nan")})
        lines.append(f"{role:<10} {pct(cpu, idle['wall_s']):>12.2f} {c['gross']:>12.3f} {c['net']:>12.3f}")
    total = pct(sum(idle["cpu_s"].values()), idle["wall_s"])
    lines.append(f"idle total: {total:.2f} % of a core over {idle['wall_s']:.0f} s (target <= {IDLE_TARGET_PCT:g} %): "
                 f"{verdict(total, IDLE_TARGET_PCT)}   [machine busy {idle['machine_busy_pct_of_core']} % of a core]")
    if load:
        gross = sum(v["gross"] for v in costs.values())
        net = sum(v["net"] for v in costs.values())
        lines.append(f"at {rate:g} tx/s: {gross:.3f} CPU-s per 1k tx for the whole stack ({net:.3f} net of idle), "
                     f"{load['transactions']} tx in {load['wall_s']:.0f} s   "
                     f"[machine busy {load['machine_busy_pct_of_core']} % of a core]")
    jit = idle.get("jit_pct_of_core", {})
    if jit:
        per_jvm = ", ".join(f"{r} {v}" for r, v in jit.items())
        lines.append(f"  of which JIT compiler threads: {sum(jit.values()):.2f} % ({per_jvm}); "
                     f"without them {total - sum(jit.values()):.2f} %")
    for role, threads in idle.get("threads_pct_of_core", {}).items():
        lines.append(f"{role} idle threads (% core): " + ", ".join(f"{n} {v}" for n, v in threads))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=200.0, help="tx/s in the load phase; 0 skips it")
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of rest before measuring")
    parser.add_argument("--name", default="idle", help="bench/results/<name>.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a connector setting for this run (repeatable)")
    args = parser.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    s = load_stack_settings()
    started = stack.up(s, quiet=True)
    try:
        if overrides:
            register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, overrides=overrides)
        roles = stack.running_parts(s)
        load = load_phase(s, roles, args.rate, args.load_seconds) if args.rate > 0 else None
        time.sleep(args.settle)
        idle = measure(roles, args.idle_seconds, threads=True)
    finally:
        if overrides and not started:
            register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn)
        stack.down(s, only=started, quiet=True)
    total = pct(sum(idle["cpu_s"].values()), idle["wall_s"])
    results: dict[str, Any] = {
        "machine": machine_info(), "settings": vars(args), "pids": roles,
        "targets": {"idle_total_pct_of_core": IDLE_TARGET_PCT},
        "idle": {**idle, "pct_of_core": {r: pct(c, idle["wall_s"]) for r, c in idle["cpu_s"].items()},
                 "total_pct_of_core": total, "target_met": total <= IDLE_TARGET_PCT},
        "load": ({**load, "rate": args.rate, "cpu_s_per_1k_tx": per_1k(load, idle)} if load else None),
    }
    for line in report(idle, load, args.rate):
        print(line, flush=True)
    write_json(args.name, results)


if __name__ == "__main__":
    main()

"""Where the CPU goes under load, and how long each process waited for it.

For each process tree (a part of the stack with its children and every thread, or one of the bench's
own processes): the CPU it used and the time its threads spent runnable but not running, waiting for
a core (the run-queue wait of /proc/<pid>/task/<tid>/schedstat), per second of wall time and per time
it ran; beside them the machine's idle share (/proc/stat) and its stall time (/proc/pressure: ms in
which some or all runnable tasks waited for a core, for I/O or for memory), which says whether a
one-off stall in a run was the machine's (a disk that held every writer) or a part's own. Every hop
of the pipeline is a thread that wakes up (Debezium's reader, Connect's producer, the broker, the
consumer, Redis, the gateway, the client): on a machine with no idle time left each wake-up queues
for a core first, and those waits add up to a floor under end-to-end latency that no setting of ours removes.

The parsers and the split are pure; `snapshot` is the I/O shell. Threads that exit between two
snapshots drop out of both sides' sums only if they exited before the first: take both snapshots
while the load runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.procfs import descendants, machine_ticks, read_text

Threads = dict[tuple[int, int], tuple[int, int, int]]  # (pid, tid) -> (CPU ns, run-queue wait ns, times run)
Census = tuple[dict[str, Threads], tuple[int, int]]  # per role; the machine's (busy, total) ticks


PRESSURE_KINDS = ("cpu", "io", "memory")


def parse_pressure(text: str) -> dict[str, int]:
    """{"some": µs, "full": µs} from a /proc/pressure/<kind> file (the `total=` of each line)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and (total := next((f for f in fields if f.startswith("total=")), None)):
            out[fields[0]] = int(total.removeprefix("total="))
    return out


def pressure() -> dict[str, int]:
    """The machine's stall totals, µs, as "<kind>_<some|full>"; {} without PSI (older kernels)."""
    out: dict[str, int] = {}
    for kind in PRESSURE_KINDS:
        if (text := read_text(f"/proc/pressure/{kind}")) is not None:
            out.update({f"{kind}_{level}": us for level, us in parse_pressure(text).items()})
    return out


def stalls(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """Pure: ms stalled per "<kind>_<level>" between two `pressure()` readings."""
    return {k: round((after[k] - before[k]) / 1000, 1) for k in after if k in before}


def parse_schedstat(text: str) -> tuple[int, int, int]:
    """(ns on a CPU, ns waiting on a run queue, times run) of a /proc/.../schedstat line."""
    cpu_ns, wait_ns, runs = text.split()[:3]
    return int(cpu_ns), int(wait_ns), int(runs)


def tree_schedstat(pid: int, children: bool = True) -> Threads:
    """Every live thread of `pid` and (with `children`) of its descendants."""
    out: Threads = {}
    for proc in (pid, *(descendants(pid) if children else ())):
        try:
            tids = os.listdir(f"/proc/{proc}/task")
        except OSError:
            continue
        for tid in tids:
            if (text := read_text(f"/proc/{proc}/task/{tid}/schedstat")) is not None:
                out[(proc, int(tid))] = parse_schedstat(text)
    return out


def snapshot(roles: dict[str, int], alone: frozenset[str] = frozenset()) -> Census:
    """Every role's tree; the roles in `alone` without their children (a bench process whose child is
    a role of its own)."""
    return ({role: tree_schedstat(pid, role not in alone) for role, pid in roles.items()},
            machine_ticks(Path("/proc/stat").read_text()))


def split(before: Census, after: Census, wall_s: float) -> dict[str, Any]:
    """Pure: per role, % of one core used, ms waited for a core per second, µs waited per time it ran;
    and the machine's idle % over the same window. Summed per thread: a thread seen only after started
    within the window and counts whole; one seen only before has exited and is left out (what it did
    within the window is lost with it, but it does not take its earlier lifetime off the others)."""
    processes: dict[str, dict[str, float]] = {}
    for role, threads in after[0].items():
        if role not in before[0]:
            continue
        earlier = before[0][role]
        cpu_ns = wait_ns = ran = 0
        for key, (cpu, wait, runs) in threads.items():
            c0, w0, r0 = earlier.get(key, (0, 0, 0))
            cpu_ns, wait_ns, ran = cpu_ns + max(0, cpu - c0), wait_ns + max(0, wait - w0), ran + max(0, runs - r0)
        processes[role] = {"cpu_pct_of_core": round(cpu_ns / 1e7 / wall_s, 1),
                           "runqueue_wait_ms_per_s": round(wait_ns / 1e6 / wall_s, 1),
                           "runqueue_wait_us_per_run": round(wait_ns / 1e3 / ran, 1) if ran else 0.0}
    busy, total = after[1][0] - before[1][0], after[1][1] - before[1][1]
    return {"wall_s": round(wall_s, 2), "cores": os.cpu_count(),
            "machine_idle_pct": round(100 * (total - busy) / total, 1) if total else 0.0, "processes": processes}


def text(census: dict[str, Any]) -> str:
    """One line: the machine's idle share, then each role's CPU and run-queue wait."""
    parts = [f"machine idle {census['machine_idle_pct']:.1f} % of {census['cores']} cores"]
    shown = [f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in (census.get("stall_ms") or {}).items()
             if k in ("io_full", "cpu_some", "memory_full")]
    if shown:
        parts.append("stalled " + ", ".join(shown))
    for role, p in sorted(census["processes"].items(), key=lambda kv: -kv[1]["cpu_pct_of_core"]):
        parts.append(f"{role} {p['cpu_pct_of_core']:.0f} % cpu, waits {p['runqueue_wait_us_per_run']:.0f} µs/run")
    return "; ".join(parts)

"""bench/dbload.py's Postgres probes: CPU of the postmaster's process tree from /proc, WAL position and
pg_stat_wal, pg_stat_statements. The parsers (parse_stat, pg_group, tree_delta) are pure and tested."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench import procfs
from contract.versions import lsn_of_text

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOP_STATEMENTS = 6


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    ticks: int         # utime + stime (fields 14, 15)
    child_ticks: int   # cutime + cstime (16, 17): reaped children


def parse_stat(line: str) -> ProcStat:
    """One /proc/<pid>/stat line; the command name may hold spaces and parentheses."""
    head, rest = line.rsplit(")", 1)
    f = rest.split()          # f[0] is field 3 (state)
    return ProcStat(pid=int(head.split("(", 1)[0]), ppid=int(f[1]), ticks=procfs.stat_cpu_ticks(line),
                    child_ticks=int(f[13]) + int(f[14]))


def pg_group(cmdline: str) -> str:
    """What a postmaster child is, from its title: 'postgres: app app 127.0.0.1(5) idle' -> 'backend app'."""
    title = cmdline.strip().removeprefix("postgres: ")
    for kind in ("walsender", "checkpointer", "background writer", "walwriter", "autovacuum",
                 "logical replication", "archiver", "startup", "walreceiver"):
        if title.startswith(kind):
            return "autovacuum" if kind == "autovacuum" else kind
    return f"backend {title.split(' ', 1)[0]}" if title else "backend ?"


@dataclass(frozen=True)
class TreeSample:
    root_ticks: int
    reaped_ticks: int                      # the postmaster's cutime + cstime
    children: dict[int, tuple[str, int]]   # pid -> (group, ticks)


def tree_delta(before: TreeSample, after: TreeSample) -> dict[str, int]:
    """CPU ticks between two samples by group; 'exited' is what children that ended spent meanwhile."""
    groups: dict[str, int] = defaultdict(int)
    groups["postmaster"] = after.root_ticks - before.root_ticks
    for pid, (group, ticks) in after.children.items():
        groups[group] += ticks - before.children.get(pid, (group, 0))[1]
    gone = sum(ticks for pid, (_g, ticks) in before.children.items() if pid not in after.children)
    groups["exited"] = after.reaped_ticks - before.reaped_ticks - gone
    return dict(groups)


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def sample_tree(root: int) -> TreeSample:
    top = read_stat(root)
    if top is None:
        raise RuntimeError(f"postmaster {root} is gone")
    children: dict[int, tuple[str, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := read_stat(int(entry.name))) is not None and st.ppid == root:
            try:
                cmd = Path(f"/proc/{st.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:   # exited meanwhile: the postmaster's reaped ticks count it
                continue
            children[st.pid] = (pg_group(cmd), st.ticks)
    return TreeSample(top.ticks, top.child_ticks, children)


@dataclass(frozen=True)
class Snapshot:
    t: float
    tree: TreeSample
    procs: dict[str, int]        # name -> utime+stime ticks
    machine: tuple[int, int]
    wal_lsn: int
    wal_stats: tuple[int, int, int]   # pg_stat_wal records, full-page images, bytes
    walsenders: int


def snapshot(mon: psycopg.Connection[Any], root: int, pids: dict[str, int]) -> Snapshot:
    tree, machine = sample_tree(root), procfs.machine_ticks(Path("/proc/stat").read_text())
    ticks = {name: st.ticks for name, pid in pids.items() if (st := read_stat(pid)) is not None}
    row = mon.execute("SELECT pg_current_wal_lsn()::text, wal_records, wal_fpi, wal_bytes::bigint, "
                      "(SELECT count(*) FROM pg_stat_replication) FROM pg_stat_wal").fetchone()
    if row is None:
        raise RuntimeError("pg_stat_wal returned no row")
    return Snapshot(time.time(), tree, ticks, machine, lsn_of_text(row[0]), (row[1], row[2], row[3]), row[4])


def statements(mon: psycopg.Connection[Any]) -> dict[str, Any]:
    """pg_stat_statements since its reset, the superuser's (this bench's measurement queries) left out."""
    rows = mon.execute("SELECT r.rolname, s.calls, s.total_exec_time, s.query FROM pg_stat_statements s "
                       "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname <> 'postgres' "
                       "ORDER BY s.total_exec_time DESC").fetchall()
    by_role: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "total_ms": 0.0})
    for role, calls, total, _query in rows:
        by_role[role]["calls"] += calls
        by_role[role]["total_ms"] = round(by_role[role]["total_ms"] + total, 1)
    top = [{"role": r[0], "calls": r[1], "total_ms": round(r[2], 1), "mean_ms": round(r[2] / r[1], 4),
            "query": " ".join(r[3].split())[:100]} for r in rows[:TOP_STATEMENTS]]
    cdc = [{"calls": r[1], "total_ms": round(r[2], 1), "query": " ".join(r[3].split())[:100]}
           for r in rows if r[0] == "freshwire_cdc"]
    return {"calls": sum(r[1] for r in rows), "total_exec_ms": round(sum(r[2] for r in rows), 1),
            "by_role": dict(by_role), "top": top, "freshwire_cdc": cdc}

"""Reading processes and the machine from /proc: CPU time, resident memory, open files, TCP connections.

The parsers are pure (text in, numbers out) and tested in tests/unit/test_bench_fanout.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

Snapshot = tuple[dict[str, float], tuple[int, int]]  # CPU seconds per role, the machine's (busy, total) ticks


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the command name, `state` first."""
    return stat.rsplit(")", 1)[1].split()


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime of a /proc/<pid>/stat line (the command name may hold spaces and parentheses)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), counted from `state`


def status_kb(status: str, name: str = "VmRSS") -> int:
    """A numeric field of /proc/<pid>/status (`VmRSS: 1234 kB` -> 1234, `Threads: 9` -> 9), 0 when absent."""
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) ticks of all CPUs from /proc/stat's `cpu` line."""
    values = [int(v) for v in proc_stat.splitlines()[0].split()[1:9]]  # user .. steal; guest is within user
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def established_on(proc_net_tcp: str, port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is `port`, from /proc/net/tcp: the
    connections a server listening on `port` holds, counted without asking the server."""
    wanted = f":{port:04X}"
    held = 0
    for line in proc_net_tcp.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "01":
            held += 1
    return held


def read_text(path: str) -> str | None:
    """A /proc file's text, or None once the process or thread is gone."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_text(f"/proc/{entry}/stat")) is not None:
            parents.setdefault(int(stat_fields(stat)[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stat_comm(stat: str) -> str:
    return stat[stat.index("(") + 1:stat.rindex(")")]


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks per thread, keyed "name (tid)"."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        if (stat := read_text(f"/proc/{pid}/task/{tid}/stat")) is not None:
            f = stat_fields(stat)
            out[f"{stat_comm(stat)} ({tid})"] = int(f[11]) + int(f[12])
    return out


# The stack's parts that are JVMs (their JIT threads are what jit_share counts).
JVM_ROLES = ("kafka", "connect")


def jit_share(before: dict[str, int], after: dict[str, int], wall_s: float) -> float:
    """Pure: % of one core the JIT compiler threads (C1, C2) used over the window: a JVM that started or
    met new load minutes ago is still compiling, which is not its cost at rest."""
    ticks = sum(t - before.get(k, 0) for k, t in after.items() if k.startswith(("C1 Compiler", "C2 Compiler")))
    return round(100 * ticks / CLK_TCK / wall_s, 2)


def cpu_seconds(pid: int) -> float:
    try:
        return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kb(pid: int) -> int:
    return status_kb(Path(f"/proc/{pid}/status").read_text())


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rlimit_nofile(pid: int) -> int:
    """The soft open-files limit of a process, from /proc/<pid>/limits (0 if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def connections_held(port: int) -> int:
    return established_on(Path("/proc/net/tcp").read_text(), port)


def cpu_snapshot(roles: dict[str, int]) -> Snapshot:
    return {role: cpu_seconds(pid) for role, pid in roles.items()}, machine_ticks(Path("/proc/stat").read_text())


def cpu_split(before: Snapshot, after: Snapshot, wall_s: float) -> dict[str, Any]:
    """CPU seconds per process over a phase, the machine's busy seconds, and what others used."""
    used = {role: round(after[0][role] - before[0][role], 2) for role in after[0]}
    busy = (after[1][0] - before[1][0]) / CLK_TCK
    return {"wall_s": round(wall_s, 2), "cores": os.cpu_count(), "processes_cpu_s": used,
            "machine_busy_s": round(busy, 2), "other_cpu_s": round(max(0.0, busy - sum(used.values())), 2)}

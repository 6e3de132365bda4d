"""bench/idle.py's pure parts: CPU of a process tree, busiest threads, cost per 1k transactions."""

from __future__ import annotations

from pathlib import Path

from bench import idle, procfs
from bench.procfs import CLK_TCK


def stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    return f"{pid} ({comm}) S {ppid} 1 1 0 -1 4194560 100 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0"


def test_tree_ticks_counts_children_and_reaped_children() -> None:
    parent = stat(10, "postgres", 1, 5, 5, cutime=7, cstime=3)
    children = [stat(11, "postgres: walsender (x) y", 10, 2, 1), stat(12, "postgres", 10, 0, 4)]
    assert idle.tree_ticks(parent, children) == 5 + 5 + 7 + 3 + 3 + 4


def test_stat_comm_keeps_spaces_and_parentheses() -> None:
    assert procfs.stat_comm(stat(1, "a (b) c", 0, 0, 0)) == "a (b) c"


def test_busiest_sums_numbered_threads_of_one_name() -> None:
    before = {"data-plane-kafk-0 (1)": 0, "task-thread-fre (2)": 10}
    after = {"data-plane-kafk-0 (1)": CLK_TCK, "data-plane-kafk-1 (3)": CLK_TCK,
             "task-thread-fre (2)": 10 + CLK_TCK * 3}
    assert idle.busiest(before, after, wall_s=10.0) == [("task-thread-fre", 30.0), ("data-plane-kafk", 20.0)]


def test_per_1k_gross_and_net_of_idle() -> None:
    load = {"transactions": 2000, "wall_s": 10.0, "cpu_s": {"kafka": 3.0, "redis": 0.1}}
    rest = {"wall_s": 30.0, "cpu_s": {"kafka": 3.0, "redis": 0.6}}
    costs = idle.per_1k(load, rest)
    assert costs["kafka"] == {"gross": 1.5, "net": 1.0}
    assert costs["redis"] == {"gross": 0.05, "net": 0.0}  # never below zero


def test_report_states_the_target() -> None:
    rest = {"wall_s": 30.0, "cpu_s": {"kafka": 0.6, "connect": 0.3}, "machine_busy_pct_of_core": 50.0}
    lines = idle.report(rest, None, 200)
    assert "idle total: 3.00 % of a core over 30 s (target <= 5 %): met" in lines[-1]


def test_connect_launcher_sets_timer_slack_then_execs_java(tmp_path: Path) -> None:
    """connectors/services.py: the Connect JVM inherits its launcher's timer slack; the launcher is
    named `java`, so the pid file's program name matches the JVM's command line after the exec."""
    import os
    import subprocess

    from connectors.services import slack_launcher

    fake_java = tmp_path / "real java"
    fake_java.write_text("#!/bin/sh\ncat /proc/self/timerslack_ns\necho \"$@\"\n")
    fake_java.chmod(0o755)
    launcher = slack_launcher(tmp_path / "bin" / "java", 2_000_000, str(fake_java))
    assert launcher.name == "java" and os.access(launcher, os.X_OK)
    out = subprocess.run([str(launcher), "-Xmx1m", "Main"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["2000000", "-Xmx1m Main"]

"""bench/sched.py: the scheduler census (CPU and run-queue wait per process tree) that shows where a
saturated machine puts the latency floor."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench import sched


def test_parse_schedstat() -> None:
    assert sched.parse_schedstat("123456 789 12\n") == (123456, 789, 12)


def test_split_per_role_per_second_and_per_run() -> None:
    before = ({"kafka": {(1, 1): (1_000_000_000, 0, 100)}, "gone": {(2, 2): (5, 5, 5)}}, (900, 1000))
    after = ({"kafka": {(1, 1): (1_500_000_000, 200_000_000, 300)}, "new": {(3, 3): (9, 9, 9)}}, (1050, 1200))
    out = sched.split(before, after, 2.0)
    assert out["processes"] == {"kafka": {"cpu_pct_of_core": 25.0, "runqueue_wait_ms_per_s": 100.0,
                                          "runqueue_wait_us_per_run": 1000.0}}
    assert out["machine_idle_pct"] == 25.0 and out["wall_s"] == 2.0
    assert "machine idle 25.0 %" in sched.text(out) and "kafka 25 % cpu, waits 1000 µs/run" in sched.text(out)


def test_split_counts_per_thread_new_threads_whole_and_exited_ones_not_against_the_rest() -> None:
    """A thread that exits in the window does not take its lifetime off the others' sums."""
    before = ({"pg": {(1, 1): (100, 10, 1), (2, 2): (9_000_000_000, 9_000_000, 90)}}, (0, 100))
    after = ({"pg": {(1, 1): (100 + 10_000_000, 10 + 1_000_000, 2), (3, 3): (10_000_000, 1_000_000, 1)}}, (0, 100))
    out = sched.split(before, after, 1.0)["processes"]["pg"]
    assert out == {"cpu_pct_of_core": 2.0, "runqueue_wait_ms_per_s": 2.0, "runqueue_wait_us_per_run": 1000.0}


def test_split_of_a_role_that_never_ran_and_an_empty_window() -> None:
    out = sched.split(({"x": {(1, 1): (0, 0, 0)}}, (0, 0)), ({"x": {(1, 1): (0, 0, 0)}}, (0, 0)), 1.0)
    assert out["processes"]["x"]["runqueue_wait_us_per_run"] == 0.0 and out["machine_idle_pct"] == 0.0


def test_a_busy_child_counts_in_its_parents_tree_unless_alone() -> None:
    """A real child process spinning for a moment: its CPU shows in this process's tree, and not when
    this process is counted alone."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.4: pass\n"
                              "time.sleep(30)"])
    try:
        before = sched.snapshot({"tree": os.getpid(), "alone": os.getpid()}, frozenset({"alone"}))
        time.sleep(0.6)
        after = sched.snapshot({"tree": os.getpid(), "alone": os.getpid()}, frozenset({"alone"}))
        out = sched.split(before, after, 0.6)["processes"]
        assert out["tree"]["cpu_pct_of_core"] > out["alone"]["cpu_pct_of_core"] + 10
    finally:
        child.kill()
        child.wait()


def test_pressure_totals_and_stalls_in_ms() -> None:
    io = ("some avg10=2.61 avg60=2.82 avg300=3.85 total=957103864\n"
          "full avg10=0.89 avg60=0.79 avg300=1.03 total=295509299\n")
    assert sched.parse_pressure(io) == {"some": 957103864, "full": 295509299}
    assert sched.parse_pressure("") == {}
    before = {"io_some": 1_000_000, "io_full": 500_000, "cpu_some": 0}
    after = {"io_some": 1_900_000, "io_full": 1_400_000, "cpu_some": 250_000, "memory_full": 7}
    stall = sched.stalls(before, after)
    assert stall == {"io_some": 900.0, "io_full": 900.0, "cpu_some": 250.0}  # a kind seen only once is left out
    census = {"machine_idle_pct": 10.0, "cores": 2, "processes": {}, "stall_ms": stall}
    assert "stalled io full 900 ms, cpu some 250 ms" in sched.text(census)


def test_pressure_of_this_machine_is_read_or_empty() -> None:
    """Real /proc: every total PSI gives is a count that only grows; without PSI the census has none."""
    first = sched.pressure()
    second = sched.pressure()
    assert set(first) == set(second)
    assert all(second[k] >= first[k] for k in first)
    if os.path.exists("/proc/pressure/io"):
        assert {"io_some", "io_full"} <= set(first)

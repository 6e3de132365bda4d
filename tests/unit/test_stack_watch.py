"""The foreground stack's watch decisions: the restart budget, what became of a part, the death line.
No processes: the watch loop only feeds these pids and clock readings."""

from __future__ import annotations

import signal

import pytest

from connectors.stack import RESTART_LIMIT, RESTART_WINDOW_S, RestartBudget, death_line, fate


def test_stack_watch_budget_allows_the_limit_then_gives_up() -> None:
    budget = RestartBudget()
    assert [budget.spend(t) for t in (0.0, 10.0, 20.0)] == [True] * RESTART_LIMIT
    assert budget.spend(30.0) is False
    assert budget.used(30.0) == RESTART_LIMIT  # a refusal counts nothing


def test_stack_watch_budget_is_a_sliding_window() -> None:
    budget = RestartBudget(limit=3, window_s=300.0)
    for t in (0.0, 100.0, 200.0):
        assert budget.spend(t)
    assert not budget.spend(299.9)
    assert budget.spend(300.0)  # the restart at 0 s has left the window
    assert not budget.spend(301.0)
    assert budget.used(600.0) == 0  # 100, 200 and 300 have all left it
    assert budget.spend(600.0)


def test_stack_watch_budget_defaults_are_three_in_five_minutes() -> None:
    assert (RESTART_LIMIT, RESTART_WINDOW_S) == (3, 300.0)
    budget = RestartBudget()
    assert (budget.limit, budget.window_s) == (RESTART_LIMIT, RESTART_WINDOW_S)


@pytest.mark.parametrize(("watched", "recorded", "runs", "expected"), [
    (100, 100, False, "died"),          # killed or crashed: its pid file still names it
    (100, None, False, "stopped"),      # `down` removed the pid file before it signalled
    (100, 200, True, "replaced"),       # someone else started it again
    (100, 200, False, "died"),          # someone else's restart died too
    (100, 100, True, "died"),           # the dead pid reused by a program of the same name
    (None, None, False, "stopped"),     # still stopped
    (None, 200, False, "stopped"),      # a pid file again, but nothing runs behind it
    (None, 200, True, "replaced"),      # started again from outside: watch it again
])
def test_stack_watch_fate(watched: int | None, recorded: int | None, runs: bool, expected: str) -> None:
    assert fate(watched, recorded, runs) == expected


def test_stack_watch_death_line_names_the_signal_or_the_status() -> None:
    assert death_line("gateway", 12, -signal.SIGKILL) == "gateway died (pid 12, killed by SIGKILL)"
    assert death_line("cdc", 7, 1) == "cdc died (pid 7, exit status 1)"
    assert death_line("cdc", 7, 0) == "cdc died (pid 7, exit status 0)"
    assert death_line("kafka", 9, None) == "kafka died (pid 9)"
    assert death_line("redis", 3, -60) == "redis died (pid 3, killed by signal 60)"

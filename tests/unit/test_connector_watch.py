"""cdc.connector_watch.next_action: when a failed Debezium task is restarted, with back-off."""

from __future__ import annotations

from typing import Any

from cdc.connector_watch import BACKOFF_MAX_S, HEALTHY_RESET_S, RestartState, healthy, next_action


def status(task: str, connector: str = "RUNNING") -> dict[str, Any]:
    return {"connector": {"state": connector}, "tasks": [{"id": 0, "state": task, "trace": "boom"}]}


def test_connector_watch_running_needs_nothing() -> None:
    state = RestartState()
    assert next_action(status("RUNNING"), state, 0.0) == "none"
    assert healthy(status("RUNNING")) and not healthy(status("FAILED")) and not healthy({"tasks": []})


def test_connector_watch_failed_task_restarts_with_doubling_back_off() -> None:
    state = RestartState()
    actions = [(t, next_action(status("FAILED"), state, t)) for t in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)]
    assert actions == [(0.0, "restart"), (0.5, "wait"), (1.0, "restart"), (2.0, "wait"), (3.0, "restart"),
                       (5.0, "wait")]
    assert state.restarts == 3
    for _ in range(20):
        next_action(status("FAILED"), state, state.next_restart_at)
    assert state.backoff_s == BACKOFF_MAX_S


def test_connector_watch_back_off_resets_after_running_a_while() -> None:
    state = RestartState()
    for t in (0.0, 1.0, 3.0):
        next_action(status("FAILED"), state, t)
    assert state.backoff_s == 8.0
    next_action(status("RUNNING"), state, 10.0)
    next_action(status("RUNNING"), state, 10.0 + HEALTHY_RESET_S)
    assert state.backoff_s == 1.0


def test_connector_watch_failed_connector_restarts_too() -> None:
    assert next_action({"connector": {"state": "FAILED"}, "tasks": []}, RestartState(), 0.0) == "restart"

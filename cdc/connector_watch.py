"""Watch the Debezium connector through Kafka Connect's REST API and restart a failed task.

A task fails for good on an error Connect does not retry (a record the broker refuses, a dropped
database connection past Debezium's retries). Nothing in Connect restarts it, and every change
after it waits. This thread reads the connector's status every `poll_s`, restarts FAILED tasks
with exponential back-off, and reports the state in metrics and /readyz. `next_action` is the pure
decision; the thread only does the HTTP.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

from cdc.metrics import Metrics

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 5.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_RESET_S = 60.0  # running this long after a restart: the next failure starts the back-off again


@dataclass
class RestartState:
    backoff_s: float = BACKOFF_MIN_S
    next_restart_at: float = 0.0
    running_since: float | None = None
    restarts: int = 0


Action = Literal["none", "restart", "wait"]


def failed_tasks(status: dict[str, Any]) -> list[int]:
    tasks = status.get("tasks") or []
    return [int(t.get("id", 0)) for t in tasks if isinstance(t, dict) and t.get("state") == "FAILED"]


def healthy(status: dict[str, Any]) -> bool:
    tasks = status.get("tasks") or []
    connector = status.get("connector") or {}
    return connector.get("state") == "RUNNING" and bool(tasks) and all(
        isinstance(t, dict) and t.get("state") == "RUNNING" for t in tasks)


def next_action(status: dict[str, Any], state: RestartState, now: float) -> Action:
    """What to do about one status reading; updates `state` (back-off, running since)."""
    connector_failed = (status.get("connector") or {}).get("state") == "FAILED"
    if not failed_tasks(status) and not connector_failed:
        if healthy(status):
            if state.running_since is None:
                state.running_since = now
            elif now - state.running_since >= HEALTHY_RESET_S:
                state.backoff_s = BACKOFF_MIN_S
        return "none"
    state.running_since = None
    if now < state.next_restart_at:
        return "wait"
    state.next_restart_at = now + state.backoff_s
    state.backoff_s = min(state.backoff_s * 2, BACKOFF_MAX_S)
    state.restarts += 1
    return "restart"


class ConnectorWatcher(threading.Thread):
    def __init__(self, connect_url: str, name: str, poll_s: float, metrics: Metrics, stop: threading.Event) -> None:
        super().__init__(name="connector-watch", daemon=True)
        self.url, self.connector, self.poll_s = connect_url.rstrip("/"), name, poll_s
        self.metrics, self.stop = metrics, stop
        self.state = RestartState()
        self.config_checked = False

    def _check_config(self) -> None:
        try:
            config = self._call("GET", f"/connectors/{self.connector}/config")
        except (OSError, urllib.error.URLError, ValueError):
            return
        self.config_checked = True
        if str(config.get("provide.transaction.metadata", "false")).lower() != "true":
            error = (f"connector {self.connector} runs without provide.transaction.metadata=true: Freshwire refuses "
                     "this configuration (versions would not follow commit order); see docs/cdc.md")
            log.error("%s", error)
            self.metrics.set_config_error(error)

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
            body = response.read()
        return json.loads(body) if body else None

    def check(self) -> None:
        try:
            status = self._call("GET", f"/connectors/{self.connector}/status")
        except (OSError, urllib.error.URLError, ValueError) as exc:
            self._report({"connector": self.connector, "state": "unreachable", "error": str(exc)[:200]}, False)
            return
        if not self.config_checked:
            self._check_config()
        action = next_action(status, self.state, time.monotonic())
        failed = failed_tasks(status)
        if action == "restart":
            trace = next((str(t.get("trace", "")) for t in status.get("tasks", []) if t.get("state") == "FAILED"), "")
            log.error("connector %s: task(s) %s FAILED; restarting (restart %s, next back-off %.0fs): %s",
                      self.connector, failed, self.state.restarts, self.state.backoff_s, trace[:1000])
            self.metrics.connector_restarts.inc()
            try:
                self._call("POST", f"/connectors/{self.connector}/restart?includeTasks=true&onlyFailed=true")
            except (OSError, urllib.error.URLError, ValueError) as exc:
                log.warning("connector %s: restart request failed: %s", self.connector, exc)
        tasks = [{"id": t.get("id"), "state": t.get("state")} for t in status.get("tasks", []) if isinstance(t, dict)]
        self._report({"connector": self.connector, "state": (status.get("connector") or {}).get("state"),
                      "tasks": tasks, "restarts": self.state.restarts}, healthy(status))

    def _report(self, detail: dict[str, Any], ok: bool) -> None:
        self.metrics.connector_running.set(1 if ok else 0)
        self.metrics.detail["connector"] = detail
        self.metrics.connector_ok = ok
        self.metrics.set_effects_ok(self.metrics.effects_ok)

    def run(self) -> None:
        while not self.stop.is_set():
            self.check()
            self.stop.wait(self.poll_s)

"""The consumer's connector watch against the real Kafka Connect (#17): a Debezium task that FAILED is
detected, restarted through Connect's REST API with back-off, and reported (metric, /readyz).

A second, private connector fails for real the way issue #17 saw the stack's own fail before it
tolerated oversized records: it runs with `errors.tolerance=none`, and a 17 MB row in a captured
column exceeds its producer's `max.request.size`, so the task FAILS (RecordTooLargeException). The
probe writes only to its own topics. It cannot recover (every restart meets the same WAL record,
which is why the stack's connector tolerates such records and the consumer degrades instead), so
the test checks detection, restarts with growing back-off, and readiness, then removes the probe.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc.connector_watch import BACKOFF_MIN_S, ConnectorWatcher
from cdc.metrics import Metrics
from connectors.register import connector_config
from connectors.stack_settings import StackSettings

# A name, topic prefix and slot of its own each run: Connect keeps a connector's source offsets after
# it is deleted, and a new connector of the same name would resume from the old one's position.
RUN = uuid.uuid4().hex[:8]
NAME, SLOT, PREFIX = f"watch-probe-{RUN}", f"watch_probe_{RUN}", f"watchprobe{RUN}"
MB = 1024 * 1024


def _call(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def _task_state(s: StackSettings) -> str:
    try:
        status = _call("GET", f"{s.connect_url}/connectors/{NAME}/status")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return "NONE"  # just created: not in the status topic yet
        raise
    tasks = status.get("tasks") or []
    return str(tasks[0]["state"]) if tasks else "NONE"


def _until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.fixture
def failing_connector(stack_settings: StackSettings) -> Iterator[StackSettings]:
    s = stack_settings
    _name, config = connector_config(s.host, s.pg_port, overrides={
        "slot.name": SLOT, "topic.prefix": PREFIX, "errors.tolerance": "none", "heartbeat.interval.ms": "0",
        "table.include.list": "public\\.documents", "column.include.list": "public\\.documents\\.(id|body)"})
    for key in [k for k in config if k.startswith("transforms") or k == "heartbeat.action.query"]:
        config.pop(key)  # its own topics, no heartbeat writes: the probe touches nothing of the stack's
    try:
        _call("PUT", f"{s.connect_url}/connectors/{NAME}/config", config)
        _until(lambda: _task_state(s) == "RUNNING", 60, "the probe task to run")
        with psycopg.connect(s.app_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO documents (tenant_id, title, body) VALUES (0, 'watch-probe', repeat('w', %s))",
                         (17 * MB,))
        yield s
    finally:
        with contextlib.suppress(OSError):
            _call("DELETE", f"{s.connect_url}/connectors/{NAME}")
        with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND active",
                               (SLOT,)).fetchone() and time.monotonic() < deadline:
                time.sleep(0.5)
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (SLOT,))
            conn.execute("DELETE FROM documents WHERE title = 'watch-probe'")


def test_connector_watch_restarts_a_failed_task_with_back_off(failing_connector: StackSettings) -> None:
    s = failing_connector
    _until(lambda: _task_state(s) == "FAILED", 60, "the probe task to fail on the oversized record")
    metrics, stop = Metrics(), threading.Event()
    watcher = ConnectorWatcher(s.connect_url, NAME, 0.25, metrics, stop)
    watcher.start()
    try:
        _until(lambda: watcher.state.restarts >= 3, 30, "three restarts")
        ready, detail = metrics.readiness()
        assert ready is False and detail["connector"]["connector"] == NAME  # type: ignore[index]
        assert metrics.connector_restarts._value.get() == watcher.state.restarts
        # back-off doubles from BACKOFF_MIN_S after each restart that did not stick
        assert watcher.state.backoff_s >= BACKOFF_MIN_S * 2 ** 3
    finally:
        stop.set()
        watcher.join(10)

"""`make up` in the foreground: a part that dies is reported with its log's tail and restarted; Ctrl-C
stops every process it started (the restarted one too), data stays in place.

Both tests share one second, private stack (a start costs 20-60 s): the restart test runs first and
leaves it running; the Ctrl-C test stops it. Either one alone works too."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from connectors import procs
from connectors.stack import ORDER, RESTART_DELAY_S
from connectors.stack_settings import REPO

PORT_OFFSET = 137  # a second, private stack beside the session's one
EVERY_PART = {"postgres", "replica", "redis", "kafka", "connect", "cdc", "gateway", "demo"}
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 180.0


def _private_env(state: Path) -> dict[str, str]:
    return {
        **os.environ,
        "FRESHWIRE_STATE_DIR": str(state),
        "FRESHWIRE_PG_PORT": str(15432 + PORT_OFFSET),
        "FRESHWIRE_REDIS_PORT": str(16379 + PORT_OFFSET),
        "FRESHWIRE_KAFKA_PORT": str(19092 + PORT_OFFSET),
        "FRESHWIRE_KAFKA_CONTROLLER_PORT": str(19093 + PORT_OFFSET),
        "FRESHWIRE_CONNECT_PORT": str(18083 + PORT_OFFSET),
        "FRESHWIRE_GATEWAY_PORT": str(18080 + PORT_OFFSET),
        "FRESHWIRE_GATEWAY2_PORT": str(18081 + PORT_OFFSET),
        "FRESHWIRE_REPLICA_PORT": str(15433 + PORT_OFFSET),
        "FRESHWIRE_REPLICA": "1",
        "FRESHWIRE_CDC_METRICS_PORT": str(19108 + PORT_OFFSET),
        "FRESHWIRE_DEMO_PORT": str(18090 + PORT_OFFSET),
    }


@dataclass
class PrivateStack:
    """`python -m connectors.stack up` in the foreground; its output (stdout and stderr) read by a
    thread so that every wait is bounded."""

    state: Path
    orchestrator: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # every pid of a part it started: killed at the end

    @property
    def pids_dir(self) -> Path:
        return self.state / "pids"

    def pids(self) -> dict[str, int]:
        found = {n: pid for n in ORDER if (pid := procs.recorded_pid(self.pids_dir, n)) is not None}
        self.seen.update(found.values())
        return found

    def read_until(self, done: Callable[[str], bool], timeout_s: float, what: str) -> list[str]:
        """The lines printed from now up to the first for which `done` is true."""
        got: list[str] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            got.append(line)
            if done(line):
                return got
        raise AssertionError(f"no {what} within {timeout_s:.0f}s; output:\n{''.join(self.output)}")

    def ctrl_c_stops_everything(self) -> None:
        running = self.pids()
        self.orchestrator.send_signal(signal.SIGINT)
        assert self.orchestrator.wait(timeout=STOP_TIMEOUT_S) == 0, "".join(self.output)
        still = {n: pid for n, pid in running.items() if procs.alive(pid)}
        assert not still, f"still running after Ctrl-C: {still}"


def _pump(stack: PrivateStack) -> None:
    assert stack.orchestrator.stdout is not None
    for line in stack.orchestrator.stdout:
        stack.output.append(line)
        stack.lines.put(line)
    stack.lines.put(None)


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    """A private stack, ready; afterwards every process it started is gone (Ctrl-C, then killed by
    pid if need be) and its state removed."""
    state = tmp_path_factory.mktemp("lifecycle") / "state"
    env = _private_env(state)
    orchestrator = subprocess.Popen([sys.executable, "-m", "connectors.stack", "up"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack = PrivateStack(state, orchestrator)
    threading.Thread(target=_pump, args=(stack,), daemon=True).start()
    try:
        stack.read_until(lambda line: line.startswith("ready in"), READY_TIMEOUT_S, "ready")
        assert set(stack.pids()) >= EVERY_PART
        yield stack
    finally:
        if orchestrator.poll() is None:
            orchestrator.send_signal(signal.SIGINT)
            try:
                orchestrator.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                orchestrator.kill()
                orchestrator.wait()
        stack.pids()  # a part it restarted has a pid of its own
        for pid in stack.seen:
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "connectors.stack", "clean"], cwd=REPO, env=env, check=False,
                       capture_output=True)


def _readyz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        return int(r.status)


def test_stack_restarts_a_part_that_dies_and_reports_its_log(private_stack: PrivateStack) -> None:
    """SIGKILL of the gateway: reported at once with its log's tail, then restarted and ready again
    (the stack keeps running for the Ctrl-C test)."""
    stack = private_stack
    old = stack.pids()["gateway"]
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()

    died = stack.read_until(lambda line: line.startswith("gateway died"), 5, "death report")[-1]
    log_lines = set((stack.state / "logs" / "gateway.log").read_text().splitlines())  # before the restart appends
    assert died.startswith(f"gateway died (pid {old}, killed by SIGKILL): restarting it in")
    assert stack.read_until(lambda line: line.startswith("--- last lines of"), 1, "log tail")[-1].rstrip().endswith(
        "gateway.log ---")
    tail = [line.rstrip("\n") for line in stack.read_until(lambda line: line == "---\n", 1, "end of the tail")[:-1]]
    assert tail and set(tail) <= log_lines, tail

    again = stack.read_until(lambda line: line.split()[:3] == ["gateway", "ready", "again"], 60, "restart")[-1]
    assert time.monotonic() - killed_at >= RESTART_DELAY_S
    new = stack.pids()["gateway"]
    assert new != old and f"(pid {new})" in again
    assert _readyz(18080 + PORT_OFFSET) == 200
    assert not procs.alive(old)


def test_stack_ctrl_c_stops_every_process_it_started(private_stack: PrivateStack) -> None:
    private_stack.ctrl_c_stops_everything()
    state = private_stack.state
    assert (state / "pg").exists() and (state / "kafka" / "data" / "meta.properties").exists()

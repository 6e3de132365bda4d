"""`make up` in the foreground, then Ctrl-C: every process it started is gone, data stays in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors import procs
from connectors.stack import ORDER
from connectors.stack_settings import REPO

PORT_OFFSET = 137  # a second, private stack beside the session's one


def test_stack_ctrl_c_stops_every_process_it_started(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
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
    orchestrator = subprocess.Popen([sys.executable, "-m", "connectors.stack", "up"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: dict[str, int] = {}
    try:
        lines = []
        deadline = time.monotonic() + 300
        assert orchestrator.stdout is not None
        while time.monotonic() < deadline:
            line = orchestrator.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("ready in"):
                break
        assert any(line.startswith("ready in") for line in lines), "".join(lines)
        pids = {n: pid for n in ORDER if (pid := procs.recorded_pid(state / "pids", n)) is not None}
        assert {"postgres", "replica", "redis", "kafka", "connect", "cdc", "gateway", "demo"} <= set(pids)
        orchestrator.send_signal(signal.SIGINT)
        assert orchestrator.wait(timeout=180) == 0
        still = {n: pid for n, pid in pids.items() if procs.alive(pid)}
        assert not still, f"still running after Ctrl-C: {still}"
        assert (state / "pg").exists() and (state / "kafka" / "data" / "meta.properties").exists()
    finally:
        if orchestrator.poll() is None:
            orchestrator.kill()
        for pid in pids.values():
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "connectors.stack", "clean"], cwd=REPO, env=env, check=False,
                       capture_output=True)

"""Packaging that works outside the repo (#11): a wheel installed without extras into a fresh
virtualenv runs the consumer, the gateway and the sink against the real stack, and the gateway serves
/client.js from the installed package."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.stack_settings import REPO, StackSettings

START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel built from this checkout, installed without extras."""
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files: setuptools writes build/ into the tree it builds.
    source = root / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (root / "dist").glob("freshwire-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    pip = subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
                          str(wheel)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return root / "venv" / "bin"


def _serving(url: str) -> bytes:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bytes(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_packaging_wheel_without_extras_runs_every_process(stack_settings: StackSettings, installed: Path,
                                                          launch: list[subprocess.Popen[bytes]],
                                                          tmp_path: Path) -> None:
    s = stack_settings
    gateway_port, metrics_port = _free_port(), _free_port()
    env = {"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "FRESHWIRE_REDIS_URL": s.redis_url, "FRESHWIRE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "FRESHWIRE_JWT_SECRET": "4b1d" * 16, "FRESHWIRE_CDC_GROUP": "packaging-probe",
           # private, empty topics: the probes start and wait, without replaying the stack's stream
           "FRESHWIRE_CDC_TOPIC": "packaging-probe-cdc", "FRESHWIRE_SINK_TOPIC": "packaging-probe-ops",
           "FRESHWIRE_CDC_METRICS_PORT": str(metrics_port),
           "FRESHWIRE_SINK_URL": "http://127.0.0.1:9/never-called", "FRESHWIRE_SINK_SECRET": "s" * 32,
           "FRESHWIRE_SINK_GROUP": "packaging-probe-sink"}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("gateway", "cdc", "sink")}  # noqa: SIM115
    commands = {"gateway": [str(installed / "freshwire-gateway"), "--port", str(gateway_port)],
                "cdc": [str(installed / "freshwire-cdc")],
                "sink": [str(installed / "python"), "-m", "clients.sink"]}
    for name, argv in commands.items():
        launch.append(subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=logs[name], stderr=subprocess.STDOUT))
    # Run from outside the checkout: every import comes from the installed wheel.
    body = _serving(f"http://127.0.0.1:{gateway_port}/client.js")
    assert b"export" in body and len(body) > 1000
    assert _serving(f"http://127.0.0.1:{metrics_port}/healthz") == b"ok\n"
    time.sleep(3)
    for name, proc in zip(commands, launch, strict=True):
        log_text = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{log_text[-3000:]}"
        assert "ModuleNotFoundError" not in log_text and "Traceback" not in log_text, log_text[-3000:]
    assert "consuming packaging-probe-ops" in (tmp_path / "sink.log").read_text()
    assert os.path.dirname(installed) != str(REPO)

"""Real redis-server processes of a test's own, on free ports: one standalone Redis, or a Redis Cluster
of 3 masters (and a replica each) formed with redis-cli. Ended by pid, only ours."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

START_TIMEOUT_S = 20.0
NODE_TIMEOUT_MS = 2000


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free port in 12000-21999 whose cluster bus port (+10000) is free too; both stay below the
    ephemeral range (32768+), so no client's outgoing connection can take them meanwhile."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(12000, 21999)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port")


def _start(port: int, data: Path, *extra: str) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_ping(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return
        except redis.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, f"redis-server on {port} did not start"
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def standalone(tmp: Path) -> Iterator[str]:
    port = free_port()
    proc = _start(port, tmp / "redis")
    try:
        _wait_ping(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@dataclass
class Cluster:
    ports: list[int]
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    data: Path = Path()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:3])

    def masters(self) -> list[int]:
        return [p for p in self.ports if p in self.procs and self.procs[p].poll() is None
                and redis.Redis(port=p).info("replication")["role"] == "master"]

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def restart(self, port: int) -> None:
        self.procs[port] = _start(port, self.data / str(port), *_cluster_args(port))
        _wait_ping(port, self.procs[port])

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            if self.procs[port].poll() is not None:
                continue
            while redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER INFO").get(  # type: ignore[no-untyped-call]
                    "cluster_state") != "ok":
                assert time.monotonic() < deadline, f"cluster not ok on {port}"
                time.sleep(0.1)
            # a replica that never finished its first sync is too stale to be promoted
            while (info := redis.Redis(port=port, decode_responses=True).info("replication"))["role"] == "slave" \
                    and info.get("master_link_status") != "up":
                assert time.monotonic() < deadline, f"replica {port} never synced"
                time.sleep(0.1)


def _cluster_args(port: int) -> list[str]:
    return ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(port + 10000), "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]


@contextmanager
def cluster(tmp: Path, replicas: bool = True) -> Iterator[Cluster]:
    ports: list[int] = []
    while len(ports) < (6 if replicas else 3):
        port = free_port()
        if port not in ports:
            ports.append(port)
    found = Cluster(ports, data=tmp / "cluster")
    try:
        for port in ports:
            found.procs[port] = _start(port, found.data / str(port), *_cluster_args(port))
        for port in ports:
            _wait_ping(port, found.procs[port])
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "1" if replicas else "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        found.wait_ok()
        yield found
    finally:
        for proc in found.procs.values():
            _stop(proc)

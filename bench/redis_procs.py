"""Real redis-server processes of our own, on free loopback ports below the ephemeral range: a
standalone Redis, or a Redis Cluster of 3 masters and a replica each formed with redis-cli. Used by
the benchmarks and the tests; every process is ended by pid, only ours."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

NODE_TIMEOUT_MS = 2000
START_TIMEOUT_S = 30.0      # processes up, cluster formed and synced


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports in 12000-21999 whose cluster bus port (+10000) is free too: both stay below the ephemeral
    range (32768+), so no outgoing connection can take them while the cluster starts."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(10_000):
        port = rng.randint(12000, 21999)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports")


def info_of(port: int, section: str) -> dict[str, Any]:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=1).info(section)


class Cluster:
    """6 redis-server processes of ours (3 masters + 3 replicas); `stop` ends them by pid."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = free_ports(6)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _start(self, port: int) -> None:
        self.procs[port] = start_server(port, self.data / str(port), "--cluster-enabled", "yes",
                                        "--cluster-config-file", f"nodes-{port}.conf", "--cluster-port",
                                        str(port + 10000), "--cluster-node-timeout", str(NODE_TIMEOUT_MS))

    def start(self) -> None:
        for port in self.ports:
            self._start(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ready(START_TIMEOUT_S)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        return [p for p in self.alive() if info_of(p, "replication")["role"] == "master"]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _ready(self, port: int) -> bool:
        cluster = redis.Redis(port=port, decode_responses=True).execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        if cluster.get("cluster_state") != "ok" or int(cluster.get("cluster_known_nodes", 0)) != len(self.ports):
            return False
        replication = info_of(port, "replication")
        if replication["role"] == "slave":  # a replica that never finished its first sync is never promoted
            return bool(replication.get("master_link_status") == "up")
        return int(replication.get("connected_slaves", 0)) >= 1

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self._ready(p) for p in self.alive()):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready (state ok, replicas synced)")
            time.sleep(0.1)

    def owner_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot."""
        client = redis.Redis(port=self.alive()[0])
        slot = int(client.execute_command("CLUSTER KEYSLOT", key))  # type: ignore[no-untyped-call]
        for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):  # type: ignore[no-untyped-call]
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master: int) -> int:
        return int(info_of(master, "replication")["slave0"]["port"])

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(10)

    def restart(self, port: int) -> None:
        self._start(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_server(proc)


def start_server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:`port`, no persistence, ready (PING) when this returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(proc)
                raise RuntimeError(f"redis-server on {port} did not start") from None
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def standalone(tmp: Path) -> Iterator[str]:
    """A standalone Redis of our own; yields its redis:// URL."""
    port = free_ports(1)[0]
    proc = start_server(port, tmp / "redis")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_server(proc)


@contextmanager
def cluster(tmp: Path) -> Iterator[Cluster]:
    """A Redis Cluster of our own, formed and synced."""
    found = Cluster(tmp / "cluster")
    try:
        found.start()
        yield found
    finally:
        found.stop()



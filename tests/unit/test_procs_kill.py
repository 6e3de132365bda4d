"""connectors.procs.kill: SIGKILL a recorded process and return only once it is gone and its port is
free, so a fault test can restart it at once (a real child process on a real port)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from connectors import procs

LISTENER = """
import socket, sys, threading, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
threading.Thread(target=lambda: time.sleep(3600), daemon=False).start()  # a second thread, as the JVMs have
time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_kill_returns_once_the_process_is_gone_and_its_port_free(tmp_path: Path) -> None:
    port = free_port()
    proc = procs.Proc("listener", [sys.executable, "-c", LISTENER, str(port)], tmp_path / "listener.log",
                      ready=lambda: listening(port), ready_timeout_s=20, port=port)
    pid = procs.start(proc, tmp_path)
    procs.wait_ready(proc)
    assert procs.kill("listener", tmp_path, port=port, timeout_s=20)
    assert not procs.alive(pid)
    assert not listening(port)
    assert not (tmp_path / "listener.pid").exists()
    again = procs.start(proc, tmp_path)  # the port is free: a restart does not fail with "port in use"
    procs.wait_ready(proc)
    assert procs.kill("listener", tmp_path, port=port, timeout_s=20) and not procs.alive(again)


def test_kill_of_nothing_recorded_is_false(tmp_path: Path) -> None:
    assert procs.kill("absent", tmp_path) is False


def test_kill_names_what_outlived_its_timeout(tmp_path: Path) -> None:
    port = free_port()
    proc = procs.Proc("listener", [sys.executable, "-c", LISTENER, str(port)], tmp_path / "listener.log",
                      ready=lambda: listening(port), ready_timeout_s=20, port=port)
    procs.start(proc, tmp_path)
    procs.wait_ready(proc)
    with socket.socket() as holder:  # another process's listener on a second port never goes away
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(TimeoutError, match="listener"):
            procs.kill("listener", tmp_path, port=holder.getsockname()[1], timeout_s=0.5)

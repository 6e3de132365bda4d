"""Start, watch and stop the stack's native processes, each with a pid file and a log file.

A process is started in a session of its own, so a Ctrl-C at the terminal reaches only the
orchestrator, which then stops the parts in order. Pid files record the command line's first
words too, so `down` never signals a pid that the kernel has since given to another program.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READY_POLL_S = 0.2
LOG_TAIL_LINES = 40
KILL_WAIT_S = 10.0  # after SIGKILL; a process stuck in the kernel longer than this is reported as stopped


class StartError(RuntimeError):
    """A part did not become ready; carries the tail of its log."""

    def __init__(self, name: str, reason: str, log_tail: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.log_tail = log_tail


@dataclass
class Proc:
    name: str
    argv: Sequence[str]
    log: Path
    ready: Callable[[], bool]
    ready_timeout_s: float = 120.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None
    stop_timeout_s: float = 30.0
    port: int | None = None  # must be free before start: else a readiness probe could answer for another process
    pid: int | None = None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _demote(user: str) -> Callable[[], None]:
    entry = pwd.getpwnam(user)

    def switch() -> None:
        os.setgid(entry.pw_gid)
        os.initgroups(user, entry.pw_gid)
        os.setuid(entry.pw_uid)

    return switch


def run_as(user: str | None) -> Callable[[], None] | None:
    """A preexec hook that drops root to `user` (PostgreSQL refuses to run as root)."""
    if user is None or os.geteuid() != 0:
        return None
    return _demote(user)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(proc: Proc, pids_dir: Path) -> int:
    if proc.port is not None and _port_taken(proc.port):
        raise StartError(proc.name, f"port {proc.port} is already in use by another process", tail(proc.log))
    proc.log.parent.mkdir(parents=True, exist_ok=True)
    pids_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **proc.env}
    with open(proc.log, "ab") as log:
        child = subprocess.Popen(
            list(proc.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=proc.cwd,
            env=env,
            start_new_session=True,
            preexec_fn=run_as(proc.user),
        )
    proc.pid = child.pid
    (pids_dir / f"{proc.name}.pid").write_text(f"{child.pid}\n{Path(proc.argv[0]).name}\n")
    return child.pid


def wait_ready(proc: Proc) -> None:
    deadline = time.monotonic() + proc.ready_timeout_s
    while time.monotonic() < deadline:
        if proc.pid is not None and not alive(proc.pid):
            raise StartError(proc.name, "exited during start", tail(proc.log))
        try:
            if proc.ready():
                return
        except Exception:
            pass
        time.sleep(READY_POLL_S)
    raise StartError(proc.name, f"not ready after {proc.ready_timeout_s:.0f}s", tail(proc.log))


def _program(pids_dir: Path, name: str) -> str:
    try:
        return (pids_dir / f"{name}.pid").read_text().splitlines()[1]
    except (OSError, IndexError):
        return ""


def file_pid(pids_dir: Path, name: str) -> int | None:
    """The pid in `name`'s pid file, running or not; None without a pid file (`stop` removes it first)."""
    try:
        return int((pids_dir / f"{name}.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def recorded_pid(pids_dir: Path, name: str) -> int | None:
    """The pid in `name`'s pid file if that process still runs the recorded program."""
    try:
        pid_line, program, *_ = (pids_dir / f"{name}.pid").read_text().splitlines()
        pid = int(pid_line)
    except (OSError, ValueError):
        return None
    if alive(pid) and program in _cmdline(pid):
        return pid
    return None


# PostgreSQL's SIGTERM is a "smart" shutdown that waits for every client to leave; SIGINT is its
# "fast" shutdown: sessions are ended and the server stops cleanly.
STOP_SIGNALS = {"postgres": signal.SIGINT}


def stop(name: str, pids_dir: Path, timeout_s: float = 30.0) -> bool:
    """The program's stop signal (SIGTERM by default), wait up to `timeout_s`, then SIGKILL.
    True if a process was stopped."""
    pid = recorded_pid(pids_dir, name)
    program = _program(pids_dir, name)
    (pids_dir / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, STOP_SIGNALS.get(program, signal.SIGTERM))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            _reap(pid)
            return True
        _reap(pid)
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    _reap(pid)
    return True


def kill(name: str, pids_dir: Path, port: int | None = None, timeout_s: float = 30.0) -> bool:
    """SIGKILL `name` (a crash, for fault tests) and wait until it is gone, so it can be started again
    at once: its pid reaped and, when `port` is given, that port free. The pid is taken before the kill,
    because a SIGKILLed process's cmdline goes first and `recorded_pid` no longer knows it; and the port
    is what says it is gone, because its leader thread can be a zombie while its other threads still
    exit holding its fds (the listening socket among them). True if a process was killed; TimeoutError
    if it is still there after `timeout_s`."""
    pid = recorded_pid(pids_dir, name)
    (pids_dir / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while alive(pid) or (port is not None and _port_taken(port)):
        _reap(pid)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} (pid {pid}) still running or holding port {port} {timeout_s:g} s after SIGKILL")
        time.sleep(0.05)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

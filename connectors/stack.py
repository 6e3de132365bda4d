"""Run the whole native stack: PostgreSQL, Redis, Kafka (KRaft), Kafka Connect with Debezium,
the cdc consumer and the gateway, all on 127.0.0.1.

    python -m connectors.stack up            # foreground, watching every part; Ctrl-C stops them, in order
    python -m connectors.stack up --detach   # start and return; `down` stops it
    python -m connectors.stack down
    python -m connectors.stack status
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from cdc.rules import load_rules
from connectors import cluster, procs, register, services
from connectors.part import Part
from connectors.stack_settings import StackSettings, load_stack_settings

# Start order of the single stack (the cluster's: cluster.ORDER); stopping goes the other way.
ORDER = ["postgres", "replica", "redis", "kafka", "connect", "cdc", "gateway", "gateway2", "demo"]

# After "ready", the foreground `up` watches every part it started.
WATCH_POLL_S = 0.5  # how often it looks at each part's process
SIGNAL_POLL_S = 0.1  # how often it looks for Ctrl-C
RESTART_LIMIT = 3  # restarts of one part within RESTART_WINDOW_S; past that it stops the stack, exit status 1
RESTART_WINDOW_S = 300.0
# Between a death and its restart: whoever killed a part to start it again themselves (an e2e test,
# an operator) gets there first, and the watcher adopts their process instead of fighting for the port.
RESTART_DELAY_S = 2.0
EXIT_GAVE_UP = 1


def _register_connector(s: StackSettings) -> None:
    register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, rules=load_rules(services.RULES_FILE))


def parts(two_gateways: bool, with_replica: bool = False) -> list[Part]:
    found = [
        Part("postgres", services.postgres_proc, after=services.postgres_setup, after_always=True),
        *([Part("replica", services.replica_proc)] if with_replica else []),
        Part("redis", services.redis_proc, after=services.preflight_redis),
        Part("kafka", services.kafka_proc, after=services.create_topics),
        Part("connect", services.connect_proc, after=_register_connector),
        Part("cdc", services.cdc_proc, app=True),
        Part("gateway", services.gateway_proc, app=True),
    ]
    if two_gateways:
        found.append(Part("gateway2", lambda s: services.gateway_proc(s, "gateway2", s.gateway2_port), app=True))
    found.append(Part("demo", services.demo_proc, app=True))
    return found


def order(s: StackSettings) -> list[str]:
    """Every part's name the topology can run, in start order."""
    return cluster.ORDER if s.topology == "cluster" else ORDER


def parts_for(s: StackSettings, two_gateways: bool = False) -> list[Part]:
    """The topology's parts (the cluster always runs its own gateways: `two_gateways` is single's)."""
    return cluster.parts(s) if s.topology == "cluster" else parts(two_gateways, s.with_replica)


T = TypeVar("T")


def batches(items: list[T], group: Callable[[T], str]) -> list[list[T]]:
    """Consecutive items of one (non-empty) group together; an item without a group alone."""
    out: list[list[T]] = []
    for item in items:
        if out and group(item) and group(out[-1][-1]) == group(item):
            out[-1].append(item)
        else:
            out.append([item])
    return out


class StopRequested(BaseException):
    """A stop signal arrived while a part was restarting. Like KeyboardInterrupt, not an Exception,
    so the readiness poll (which treats a failing probe as "not yet") lets it through."""


def _launch(s: StackSettings, part: Part, stop_requested: Callable[[], bool] | None = None) -> procs.Proc:
    """Build and start one part's process; its readiness probe raises StopRequested once
    `stop_requested()` is true."""
    proc = part.build(s)
    if stop_requested is not None:
        probe = proc.ready

        def ready_unless_stopping() -> bool:
            if stop_requested():
                raise StopRequested
            return probe()

        proc.ready = ready_unless_stopping
    procs.start(proc, s.pids_dir)
    return proc


def _setup(s: StackSettings, part: Part, proc: procs.Proc) -> None:
    if part.after is not None:
        try:
            part.after(s)
        except Exception as exc:
            raise procs.StartError(part.name, f"setup failed: {exc}", procs.tail(proc.log)) from exc


def _start_part(s: StackSettings, part: Part, stop_requested: Callable[[], bool] | None = None) -> procs.Proc:
    """Start one part, wait until it is ready and run its setup (every `after` is idempotent, so a
    restart runs it again, as any fresh start does). Raises StartError with its log's tail if it fails,
    StopRequested once `stop_requested()` is true while it waits for readiness."""
    proc = _launch(s, part, stop_requested)
    procs.wait_ready(proc)
    _setup(s, part, proc)
    return proc


def running_parts(s: StackSettings) -> dict[str, int]:
    return {n: pid for n in order(s) if (pid := procs.recorded_pid(s.pids_dir, n)) is not None}


def up(s: StackSettings, with_apps: bool = True, two_gateways: bool = False, quiet: bool = False) -> list[str]:
    """Start every part not already running and wait for each to be ready; returns the names started.
    The parts of one group start together, then each is waited for, then their setup runs.

    A part that fails stops the ones started here and raises StartError with its log's tail.
    """
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    already = running_parts(s)
    started: list[str] = []
    try:
        for batch in batches([p for p in parts_for(s, two_gateways) if with_apps or not p.app], lambda p: p.group):
            t0 = time.monotonic()
            launched: list[tuple[Part, procs.Proc]] = []
            for part in batch:
                if part.name in already:
                    if part.after is not None and part.after_always:
                        part.after(s)
                    if not quiet:
                        print(f"  {part.name:<9} already running (pid {already[part.name]})")
                    continue
                started.append(part.name)  # before it starts: a failed start stops what it left behind
                launched.append((part, _launch(s, part)))
            for part, proc in launched:
                procs.wait_ready(proc)
                if part.after is None and not quiet:
                    print(f"  {part.name:<9} ready in {time.monotonic() - t0:5.1f}s (pid {proc.pid})", flush=True)
            for part, proc in launched:
                if part.after is not None:
                    _setup(s, part, proc)
                    if not quiet:
                        print(f"  {part.name:<9} ready in {time.monotonic() - t0:5.1f}s (pid {proc.pid})", flush=True)
    except BaseException:
        down(s, only=started, quiet=True)
        raise
    return started


SLOW_TO_STOP = ("kafka", "connect", "postgres")  # given 60 s before SIGKILL; the others 20 s


def _stop_timeout_s(name: str) -> float:
    return 60.0 if name.rstrip("0123456789") in SLOW_TO_STOP else 20.0


def down(s: StackSettings, only: list[str] | None = None, quiet: bool = False) -> list[str]:
    """Stop the parts in reverse start order, each group's parts at once (the last KRaft nodes of a
    quorum stopped one by one would wait for a controller majority that is already gone)."""
    stopped = []
    names = [n for n in order(s) if only is None or n in only]
    groups = {p.name: p.group for p in parts_for(s, two_gateways=True)}
    for batch in reversed(batches(names, lambda n: groups.get(n, ""))):
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            done = list(pool.map(lambda n: procs.stop(n, s.pids_dir, timeout_s=_stop_timeout_s(n)), reversed(batch)))
        for name, was_running in zip(reversed(batch), done, strict=True):
            if was_running:
                stopped.append(name)
                if not quiet:
                    print(f"  {name:<9} stopped", flush=True)
    return stopped


def describe(s: StackSettings) -> str:
    if s.topology == "cluster":
        return cluster.describe(s)
    return "\n".join([
        "Freshwire is ready:",
        f"  postgres   {s.host}:{s.pg_port}  (db app; user app/app; superuser postgres/postgres)",
        f"  redis      {s.redis_url}",
        f"  kafka      {s.kafka_bootstrap}  (topics {services.TOPIC_CHANGES}, {services.TOPIC_OPS}, "
        f"{services.TOPIC_DLQ})",
        f"  connect    {s.connect_url}  (connector freshwire-postgres)",
        f"  cdc        metrics http://{s.host}:{s.cdc_metrics_port}/metrics",
        *([f"  replica    {s.host}:{s.replica_port}  (standby, apply delay {s.replica_delay_ms} ms, "
           f"release gating {'on' if s.release_gating else 'off'})"] if s.with_replica else []),
        f"  gateway    ws://{s.host}:{s.gateway_port}/ws   http {s.gateway_url}/readyz",
        f"  demo       http://{s.host}:{s.demo_port}/   (open it in two windows and move cards)",
        f"  logs       {s.logs_dir}",
    ])


def _catch_stop_signals() -> list[int]:
    """Route SIGINT/SIGTERM into a list from now on (before "ready" is printed, so a
    Ctrl-C that follows it at once is never a KeyboardInterrupt)."""
    got: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        got.append(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return got


# ---------------------------------------------------------------- watching after "ready"

class RestartBudget:
    """At most `limit` restarts within any `window_s` seconds: a part that keeps dying is a fault to
    look at, not one to paper over, so past that the stack stops."""

    def __init__(self, limit: int = RESTART_LIMIT, window_s: float = RESTART_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def used(self, now: float) -> int:
        """Restarts counted within the window that ends at `now` (monotonic seconds)."""
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        return len(self._times)

    def spend(self, now: float) -> bool:
        """Count a restart at `now`; False, counting nothing, when the window already holds `limit`."""
        if self.used(now) >= self.limit:
            return False
        self._times.append(now)
        return True


Fate = Literal["died", "stopped", "replaced"]


def fate(watched: int | None, recorded: int | None, recorded_runs: bool) -> Fate:
    """What became of a part whose watched process (`watched`; None: stopped earlier) no longer runs,
    given the pid its pid file names (`recorded`) and whether that process runs.

    "stopped": the pid file is gone, as `down` (procs.stop) removes it before it signals: on purpose,
    not restarted. "replaced": another process started it again; watch that one. "died": restart it.
    """
    if recorded is None:
        return "stopped"
    if recorded_runs and recorded != watched:
        return "replaced"
    return "stopped" if watched is None else "died"


def death_line(name: str, pid: int, exit_code: int | None) -> str:
    """`cdc died (pid 12, killed by SIGKILL)`; exit_code as os.waitstatus_to_exitcode gives it
    (negative: the signal), None when unknown (not a child of this process)."""
    if exit_code is None:
        how = ""
    elif exit_code >= 0:
        how = f", exit status {exit_code}"
    else:
        try:
            how = f", killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            how = f", killed by signal {-exit_code}"
    return f"{name} died (pid {pid}{how})"


@dataclass
class _Watched:
    part: Part
    pid: int | None  # None: stopped from outside; watched again once its pid file names a running process
    budget: RestartBudget = field(default_factory=RestartBudget)
    restart_at: float | None = None  # set when its death was reported: the restart is due then


def _reap(pid: int) -> int | None:
    """The exit code of a dead child (negative: killed by that signal); None if not our child."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if got == pid else None


def _say(line: str, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _restart(s: StackSettings, w: _Watched, stop_signals: list[int]) -> int | None:
    name = w.part.name
    _say(f"  {name:<9} restarting")
    t0 = time.monotonic()
    try:
        proc = _start_part(s, w.part, stop_requested=lambda: bool(stop_signals))
    except StopRequested:
        return 0
    except procs.StartError as exc:
        _say(f"\nFAILED to restart {exc}: stopping the stack\n--- last lines of {name}'s log ---\n{exc.log_tail}",
             err=True)
        return EXIT_GAVE_UP
    w.pid, w.restart_at = proc.pid, None
    _say(f"  {name:<9} ready again in {time.monotonic() - t0:5.1f}s (pid {proc.pid})")
    return None


def _look(s: StackSettings, w: _Watched, now: float, stop_signals: list[int]) -> int | None:
    """One look at one part: report a death at once, restart it when due. An exit status if the
    stack must stop."""
    name = w.part.name
    if w.restart_at is not None and now < w.restart_at:
        return None
    # A reported death stays a death: its pid, reaped, may already belong to another program.
    if w.restart_at is None and w.pid is not None and procs.alive(w.pid):
        return None
    recorded = procs.file_pid(s.pids_dir, name)
    runs = recorded is not None and procs.recorded_pid(s.pids_dir, name) == recorded
    what = fate(w.pid, recorded, runs)
    if what == "replaced":
        if w.pid is not None:
            _reap(w.pid)
        _say(f"  {name:<9} started again by another process (pid {recorded}): watching that one")
        w.pid, w.restart_at = recorded, None
        return None
    if what == "stopped" or w.pid is None:
        if w.pid is not None:
            _reap(w.pid)
            _say(f"  {name:<9} stopped from outside (its pid file is gone): not restarting it")
        w.pid, w.restart_at = None, None
        return None
    if w.restart_at is None:
        died = death_line(name, w.pid, _reap(w.pid))
        log = s.logs_dir / f"{name}.log"  # every part logs there (services.py)
        tail = f"--- last lines of {log} ---\n{procs.tail(log)}\n---"
        window = f"{RESTART_WINDOW_S / 60:.0f} minutes"
        if not w.budget.spend(now):
            _say(f"\n{died}: restarted {RESTART_LIMIT} times within {window} already: giving up, "
                 f"stopping the stack\n{tail}", err=True)
            return EXIT_GAVE_UP
        _say(f"\n{died}: restarting it in {RESTART_DELAY_S:.0f}s (restart {w.budget.used(now)} of {RESTART_LIMIT} "
             f"allowed within {window})\n{tail}", err=True)
        w.restart_at = now + RESTART_DELAY_S
        return None
    return _restart(s, w, stop_signals)


def watch(s: StackSettings, started: list[Part], stop_signals: list[int]) -> int:
    """Until a stop signal arrives, keep every part in `started` running: a part that dies is
    reported at once (stderr, with its log's tail) and restarted after RESTART_DELAY_S, within its
    RestartBudget. Returns the exit status: 0 after a stop signal, EXIT_GAVE_UP when a part is past
    its budget or cannot be restarted. Stopping the parts is the caller's job."""
    watched = [_Watched(p, procs.file_pid(s.pids_dir, p.name)) for p in started]
    next_look = 0.0
    while not stop_signals:  # short sleeps, not signal.pause(): a signal between the test and pause() would be lost
        now = time.monotonic()
        if now >= next_look:
            next_look = now + WATCH_POLL_S
            for w in watched:
                status = _look(s, w, now, stop_signals)
                if status is not None:
                    return status
        time.sleep(SIGNAL_POLL_S)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "clean"])
    parser.add_argument("--detach", action="store_true", help="start and return: nothing watches the parts")
    parser.add_argument("--no-apps", action="store_true", help="only the infrastructure (no cdc, no gateway)")
    parser.add_argument("--two-gateways", action="store_true", help="also start a second gateway process")
    args = parser.parse_args(argv)
    s = load_stack_settings()
    if args.command == "status":
        for name, pid in running_parts(s).items():
            print(f"  {name:<9} pid {pid}")
        return 0
    if args.command == "down":
        down(s)
        return 0
    if args.command == "clean":
        if running_parts(s):
            print("the stack is running: `make down` first", file=sys.stderr)
            return 1
        pg = s.state_dir / "pg"
        if pg.is_symlink():
            shutil.rmtree(pg.resolve(), ignore_errors=True)
        shutil.rmtree(s.state_dir, ignore_errors=True)
        print(f"removed {s.state_dir}")
        return 0
    t0 = time.monotonic()
    try:
        started = up(s, with_apps=not args.no_apps, two_gateways=args.two_gateways)
    except procs.StartError as exc:
        print(f"\nFAILED: {exc}\n--- last lines of {exc.name}'s log ---\n{exc.log_tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stop_signals = _catch_stop_signals()
    print(describe(s))
    print(f"ready in {time.monotonic() - t0:.1f}s", flush=True)
    if args.detach:
        return 0
    print("Ctrl-C stops the stack (data stays in place).", flush=True)
    status = watch(s, [p for p in parts_for(s, args.two_gateways) if p.name in started], stop_signals)
    print("\nstopping…", flush=True)
    down(s, only=started)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Run the whole native stack: PostgreSQL, Redis, Kafka (KRaft), Kafka Connect with Debezium,
the cdc consumer and the gateway, all on 127.0.0.1.

    python -m connectors.stack up            # foreground; Ctrl-C stops every part, in order
    python -m connectors.stack up --detach   # start and return; `down` stops it
    python -m connectors.stack down
    python -m connectors.stack status
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from connectors import procs, register, services
from connectors.stack_settings import StackSettings, load_stack_settings

# Start order; stopping goes the other way.
ORDER = ["postgres", "replica", "redis", "kafka", "connect", "cdc", "gateway", "gateway2", "demo"]


@dataclass
class Part:
    name: str
    build: Callable[[StackSettings], procs.Proc]
    after: Callable[[StackSettings], None] | None = None
    app: bool = False
    after_always: bool = False  # run `after` even when the part was already running (idempotent setup)


def _register_connector(s: StackSettings) -> None:
    register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn)


def _postgres_ready(s: StackSettings) -> None:
    services.apply_schema(s)
    if not s.with_replica:
        # An unused replica slot would hold back the primary's xmin (hot_standby_feedback) and WAL:
        # every table would bloat while the stack runs without its replica.
        services.drop_replica_slot(s)


def parts(two_gateways: bool, with_replica: bool = False) -> list[Part]:
    found = [
        Part("postgres", services.postgres_proc, after=_postgres_ready, after_always=True),
        *([Part("replica", services.replica_proc)] if with_replica else []),
        Part("redis", services.redis_proc),
        Part("kafka", services.kafka_proc, after=services.create_topics),
        Part("connect", services.connect_proc, after=_register_connector),
        Part("cdc", services.cdc_proc, app=True),
        Part("gateway", services.gateway_proc, app=True),
    ]
    if two_gateways:
        found.append(Part("gateway2", lambda s: services.gateway_proc(s, "gateway2", s.gateway2_port), app=True))
    found.append(Part("demo", services.demo_proc, app=True))
    return found


def running_parts(s: StackSettings) -> dict[str, int]:
    return {n: pid for n in ORDER if (pid := procs.recorded_pid(s.pids_dir, n)) is not None}


def up(s: StackSettings, with_apps: bool = True, two_gateways: bool = False, quiet: bool = False) -> list[str]:
    """Start every part not already running and wait for each to be ready; returns the names started.

    A part that fails stops the ones started here and raises StartError with its log's tail.
    """
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    already = running_parts(s)
    started: list[str] = []
    try:
        for part in parts(two_gateways, s.with_replica):
            if part.app and not with_apps:
                continue
            if part.name in already:
                if part.after is not None and part.after_always:
                    part.after(s)
                if not quiet:
                    print(f"  {part.name:<9} already running (pid {already[part.name]})")
                continue
            t0 = time.monotonic()
            proc = part.build(s)
            procs.start(proc, s.pids_dir)
            started.append(part.name)
            procs.wait_ready(proc)
            if part.after is not None:
                try:
                    part.after(s)
                except Exception as exc:
                    raise procs.StartError(part.name, f"setup failed: {exc}", procs.tail(proc.log)) from exc
            if not quiet:
                print(f"  {part.name:<9} ready in {time.monotonic() - t0:5.1f}s (pid {proc.pid})", flush=True)
    except BaseException:
        down(s, only=started, quiet=True)
        raise
    return started


def down(s: StackSettings, only: list[str] | None = None, quiet: bool = False) -> list[str]:
    stopped = []
    for name in reversed(ORDER):
        if only is not None and name not in only:
            continue
        timeout = 60.0 if name in ("kafka", "connect", "postgres") else 20.0
        if procs.stop(name, s.pids_dir, timeout_s=timeout):
            stopped.append(name)
            if not quiet:
                print(f"  {name:<9} stopped", flush=True)
    return stopped


def describe(s: StackSettings) -> str:
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


def _wait_for_signal(got: list[int]) -> None:
    while not got:  # a short sleep, not signal.pause(): a signal between the test and pause() would be lost
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "clean"])
    parser.add_argument("--detach", action="store_true", help="start and return instead of waiting for Ctrl-C")
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
    _wait_for_signal(stop_signals)
    print("\nstopping…", flush=True)
    down(s, only=started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fan-out and connections (issue #8, part 3; targets of issue #15): connections one gateway process holds, memory per
connection, and invalidations delivered per second to many subscribers of one key, each measured
against a minimal python-websockets `broadcast()` server (bench/ref_broadcast.py) in the same run.

    .venv/bin/python -m bench.fanout [--connections 20000] [--subscribers 1000,5000] [--seconds 10]
                                     [--rate 100] [--client-procs 4] [--keys-per-connection 2] [--direct-writes]

What runs, all on 127.0.0.1 and on private ports (Redis 16679, gateway 18380, reference 18381, state
in /tmp/fw-fanout): redis-server (Debian's, through connectors/services), the real gateway
(`python -m gateway`, Redis backend), the reference server, `--client-procs` load-generator processes
(bench/fanout_load.py, `websockets` asyncio clients; each binds its own 127.0.0.x source address) and
this process, which is the one publisher. Postgres, Debezium, Kafka and the cdc consumer are not
needed: invalidations are injected the way the consumer releases them, by running
contract.redis_layout's release script with strictly increasing versions; both servers receive its
PUBLISH over Redis pubsub (the reference relays the raw message).

Phases, first Freshwire then the reference for each:
1. connections: RSS (VmRSS) of the idle server, then `--connections` connections (on the gateway each
   subscribes to `--keys-per-connection` keys: one of its own, the rest shared), RSS again;
   (after - before) / connections is the memory per connection; held = the server's ESTABLISHED
   sockets on its port (/proc/net/tcp), counted without asking it.
2. fan-out, per subscriber count: that many connections to one key; the publisher releases versions
   of it at `--rate` per second for `--seconds` (`--rate 0`: as fast as one synchronous publisher
   can, which then depends on how much CPU the server leaves it), then waits until every subscriber
   has the last version (at most `--drain-timeout`).
   deliveries/s = frames received by all subscribers / (first publish -> last frame received);
   "lag" is how long after the last publish the last subscriber got the last version.
   The gateway coalesces per connection (a slow reader gets the newest version, not every one), so
   the distinct versions per subscriber are reported next to the versions published; the
   reference sends every message (and buffers without bound for a slow reader).
CPU seconds of every process (utime + stime from /proc/<pid>/stat) are taken around each phase
(opening the connections; publishing and delivering), with the machine's busy time from /proc/stat:
what is left over is other work on the machine.
RLIMIT_NOFILE is raised for this process and everything it starts (the hard limit too, where that is
allowed); connection counts are capped at what fits under it. `--profile` records the server with
py-spy during each publish phase. Prints tables, each target beside its figure ("fan-out 1,000 subs:
0.93x reference (target >= 1x): missed"), and the server's CPU time per frame (which, unlike
deliveries/s, does not depend on the share of a busy machine each server got); writes
bench/results/fanout.json (targets and verdicts under "targets") and fanout.png; with --direct-writes
(the gateway runs with FRESHWIRE_DIRECT_WRITES=1) fanout-direct.json and fanout-direct.png.
Bounded by `--timeout` overall; stops only the processes it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from bench import report
from bench.fanout_load import client_main, raise_nofile
from bench.procfs import connections_held, cpu_snapshot, cpu_split, fd_count, rlimit_nofile, rss_kb
from connectors import procs, services
from connectors.stack_settings import REPO, StackSettings, load_stack_settings
from contract.redis_layout import PREFIXES, RELEASE_LUA, VERSIONS, WATERMARK, release_args, tx_key
from contract.versions import lsn_of_version, version_of_lsn
from gateway.auth import mint

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")
FAN_KEY = "bench:fan"
SETTLE_S = 2.0
CLOSE_TIMEOUT_S = 30.0
NOFILE_RESERVE = 4096  # open files to ask for beside the connections
SERVER_FILES = 100     # files a server holds beside its connections: listener, Redis pool (64), logs, ...
# Issue #15's targets: at least the reference's deliveries/s at every subscriber count, and at most
# 15 KB per connection with TARGET_CONNECTIONS connections (subscriptions held) on one process.
TARGET_KB_PER_CONNECTION = 15.0
TARGET_RATIO = 1.0
TARGET_CONNECTIONS = 20000


# ---------------------------------------------------------------- pure helpers (tests/unit/test_bench_fanout.py)

def spread(n: int, parts: int) -> list[int]:
    """n split into `parts` counts that differ by at most one."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def fit_connections(requested: int, nofile: int) -> int:
    """Connections one server process can hold under an open-files limit of `nofile`. Asking for more
    only makes accept() fail with EMFILE (which CPython 3.11 then logs once per backlog slot)."""
    return max(0, min(requested, nofile - SERVER_FILES))


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def per_second(count: int, start: float, end: float) -> float:
    return count / (end - start) if end > start else 0.0


def kb_per_connection(before_kb: int, after_kb: int, n: int) -> float:
    return (after_kb - before_kb) / n if n > 0 else 0.0


def verdict(value: float, target: float, at_least: bool) -> str:
    return "met" if (value >= target if at_least else value <= target) else "missed"


def targets(connections: list[dict[str, Any]], ratio: dict[str, float]) -> list[dict[str, Any]]:
    """Each target of issue #15 beside its figure: fan-out ratio per subscriber count, and Freshwire's
    memory per connection and connections held (of those requested: RLIMIT_NOFILE may cap the
    TARGET_CONNECTIONS asked for, see fit_connections)."""
    out: list[dict[str, Any]] = []
    for subs, value in ratio.items():
        out.append({"name": f"fan-out {int(subs):,} subs", "value": value, "unit": "x reference",
                    "target": f">= {TARGET_RATIO:g}x", "verdict": verdict(value, TARGET_RATIO, True)})
    for row in connections:
        if row["target"] != "freshwire":
            continue
        out.append({"name": f"memory per connection at {row['opened']:,}", "value": row["kb_per_connection"],
                    "unit": "KB", "target": f"<= {TARGET_KB_PER_CONNECTION:g} KB",
                    "verdict": verdict(row["kb_per_connection"], TARGET_KB_PER_CONNECTION, False)})
        out.append({"name": "connections held", "value": row["held"], "unit": "",
                    "target": f">= {row['requested']:,} requested",
                    "verdict": verdict(row["held"], row["requested"], True)})
    return out


def cpu_per_frame_us(row: dict[str, Any]) -> float:
    """The server's CPU time per frame delivered in a fan-out phase, microseconds: unlike deliveries/s,
    it does not depend on how much of a shared machine the server got."""
    role = "gateway" if row["target"] == "freshwire" else "reference"
    cpu_s = row["cpu"]["processes_cpu_s"].get(role, 0.0)
    return round(cpu_s / row["frames"] * 1e6, 2) if row["frames"] else 0.0


# ---------------------------------------------------------------- the processes

@dataclass
class Rig:
    s: StackSettings
    args: argparse.Namespace
    started: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    clients: list[tuple[BaseProcess, Connection]] = field(default_factory=list)
    publisher: Publisher | None = None

    def start(self, proc: procs.Proc) -> None:
        procs.start(proc, self.s.pids_dir)
        self.started.append(proc.name)
        procs.wait_ready(proc)
        assert proc.pid is not None
        self.pids[proc.name] = proc.pid

    def stop(self) -> None:
        for _process, pipe in self.clients:
            with contextlib.suppress(OSError, ValueError):
                pipe.send(("exit",))
        for process, _pipe in self.clients:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for name in reversed(self.started):
            procs.stop(name, self.s.pids_dir, timeout_s=10)

    def ask(self, commands: list[tuple[Any, ...]], timeout_s: float) -> list[dict[str, Any]]:
        """One command per client process, sent together; their replies, in order."""
        for (_process, pipe), command in zip(self.clients, commands, strict=True):
            pipe.send(command)
        deadline = time.monotonic() + timeout_s
        replies = []
        for _process, pipe in self.clients:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a load-generator process did not answer {commands[0][0]!r} in {timeout_s:.0f}s")
            replies.append(pipe.recv())
        return replies

    def client_roles(self) -> dict[str, int]:
        return {f"client{i}": int(process.pid or 0) for i, (process, _pipe) in enumerate(self.clients)}


class Publisher:
    """The one publisher: contract.redis_layout's release script, as the cdc consumer runs it."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=5)
        self.script = self.redis.register_script(RELEASE_LUA)
        current = self.redis.get(WATERMARK)
        self.n = lsn_of_version(current.decode()) if isinstance(current, bytes) else 0

    def release(self, key: str) -> str:
        self.n += 1
        version = version_of_lsn(self.n)
        self.script(keys=[VERSIONS, PREFIXES, WATERMARK, tx_key("")],
                    args=release_args(version, int(time.time() * 1000), (key,), ()))
        return version

    def run(self, key: str, seconds: float, rate: float) -> tuple[int, str, float]:
        """(versions released, the last one, seconds taken)."""
        start = time.monotonic()
        n, last = 0, ""
        while time.monotonic() - start < seconds:
            last = self.release(key)
            n += 1
            if rate > 0:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        return n, last, time.monotonic() - start


def start_rig(rig: Rig, nofile: int) -> None:
    s, args = rig.s, rig.args
    rig.start(services.redis_proc(s))
    rig.publisher = Publisher(s.redis_url)
    most = max([args.connections, *counts(args.subscribers)])  # above every phase's count: no 4013
    gateway = services.gateway_proc(s)
    gateway.env.update({"FRESHWIRE_JWT_SECRET": SECRET, "FRESHWIRE_REDIS_URL": s.redis_url,
                        "FRESHWIRE_MAX_CONNECTIONS": str(most + max(most // 10, 100)),
                        "FRESHWIRE_DIRECT_WRITES": "1" if args.direct_writes else "0"})
    rig.start(gateway)
    ref_port = args.reference_port
    rig.start(procs.Proc(
        name="reference", port=ref_port, cwd=REPO, log=s.logs_dir / "reference.log",
        argv=[sys.executable, "-m", "bench.ref_broadcast", "--host", s.host, "--port", str(ref_port),
              "--redis-url", s.redis_url],
        env={"PYTHONUNBUFFERED": "1"},
        ready=lambda: services.http_ok(f"http://{s.host}:{ref_port}/healthz"), ready_timeout_s=30))
    ctx = multiprocessing.get_context("spawn")
    for _ in range(args.client_procs):
        parent, child = ctx.Pipe()
        process = ctx.Process(target=client_main, args=(child, nofile), daemon=True)
        process.start()
        rig.clients.append((process, parent))


def gateway_connections(rig: Rig) -> int | None:
    """The gateway's own count (/readyz), None if it does not answer (e.g. out of file descriptors)."""
    url = f"http://{rig.s.host}:{rig.s.gateway_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 (e.g. no release for a while) still carries the figures
        body = json.load(exc)
    except OSError:
        return None
    return int(body["connections"])


def server_port(rig: Rig, target: str) -> int:
    return rig.s.gateway_port if target == "freshwire" else int(rig.args.reference_port)


# ---------------------------------------------------------------- phases

def target_url(rig: Rig, target: str) -> tuple[str, str]:
    """(WebSocket URL, subprotocol to offer) of `target`."""
    if target == "freshwire":
        token = mint(SECRET, "bench", ["bench:*"], 3600)
        return f"ws://{rig.s.host}:{rig.s.gateway_port}/ws?token={token}", "freshwire.v1"
    return f"ws://{rig.s.host}:{rig.args.reference_port}/", ""


def open_connections(rig: Rig, target: str, n: int, keys_per_conn: int, fan_key: str) -> dict[str, Any]:
    url, subprotocol = target_url(rig, target)
    shares = spread(n, len(rig.clients))
    firsts = [sum(shares[:i]) for i in range(len(shares))]
    timeout = 60.0
    commands = [("open", url, share, first, keys_per_conn, fan_key, subprotocol, f"127.0.0.{10 + i}", timeout)
                for i, (share, first) in enumerate(zip(shares, firsts, strict=True))]
    replies = rig.ask(commands, timeout_s=timeout + 120 + n / 50)
    errors: dict[str, int] = {}
    for reply in replies:
        for name, count in reply["errors"].items():
            errors[name] = errors.get(name, 0) + count
    return {"opened": sum(r["opened"] for r in replies), "failed": sum(r["failed"] for r in replies),
            "errors": errors}


def close_connections(rig: Rig, target: str) -> None:
    rig.ask([("close", 10.0)] * len(rig.clients), timeout_s=CLOSE_TIMEOUT_S + 60)
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    while time.monotonic() < deadline:
        if connections_held(server_port(rig, target)) == 0:
            return
        time.sleep(0.2)
    print(f"  warning: {target} still holds connections {CLOSE_TIMEOUT_S:.0f}s after the clients closed",
          flush=True)


def phase_roles(rig: Rig, target: str, pid: int) -> dict[str, int]:
    """The processes of a phase whose CPU time is reported."""
    return {"gateway" if target == "freshwire" else "reference": pid, "redis": rig.pids["redis"],
            "bench (publisher)": os.getpid(), **rig.client_roles()}


def connections_phase(rig: Rig, target: str) -> dict[str, Any]:
    pid = rig.pids["gateway" if target == "freshwire" else "reference"]
    n = rig.args.connections
    keys_per_conn = rig.args.keys_per_connection if target == "freshwire" else 0
    time.sleep(SETTLE_S)
    rss0, fds0 = rss_kb(pid), fd_count(pid)
    roles = phase_roles(rig, target, pid)
    before = cpu_snapshot(roles)
    t0 = time.monotonic()
    opened = open_connections(rig, target, n, keys_per_conn, "")
    open_s = time.monotonic() - t0
    after = cpu_snapshot(roles)
    time.sleep(SETTLE_S)
    rss1, fds1 = rss_kb(pid), fd_count(pid)
    held = connections_held(server_port(rig, target))
    result = {"target": target, "requested": n, **opened, "held": held,
              "gateway_counts": gateway_connections(rig) if target == "freshwire" else None,
              "server_fds_added": fds1 - fds0, "rlimit_nofile": rlimit_nofile(pid),
              "keys_per_connection": keys_per_conn, "open_s": round(open_s, 1),
              "rss_before_kb": rss0, "rss_after_kb": rss1,
              "kb_per_connection": round(kb_per_connection(rss0, rss1, opened["opened"]), 2),
              "cpu_while_opening": cpu_split(before, after, open_s)}
    close_connections(rig, target)
    return result


def start_profiler(rig: Rig, target: str, subscribers: int, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the server for the publish phase (--profile), collapsed stacks in the state dir."""
    if not rig.args.profile:
        return None
    out = rig.s.state_dir / f"profile-{target}-{subscribers}.txt"
    py_spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(py_spy), "record", "--nonblocking", "--format", "raw", "--output", str(out),
                             "--pid", str(pid), "--duration", str(int(rig.args.seconds) + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(5)


def fanout_phase(rig: Rig, target: str, subscribers: int) -> dict[str, Any]:
    assert rig.publisher is not None
    args = rig.args
    pid = rig.pids["gateway" if target == "freshwire" else "reference"]
    opened = open_connections(rig, target, subscribers, 0, FAN_KEY if target == "freshwire" else "")
    time.sleep(SETTLE_S)
    rig.ask([("reset",)] * len(rig.clients), timeout_s=30)
    roles = phase_roles(rig, target, pid)
    profiler = start_profiler(rig, target, subscribers, pid)
    before = cpu_snapshot(roles)
    t0 = time.monotonic()
    published, final, publish_s = rig.publisher.run(FAN_KEY, args.seconds, args.rate)
    rss_published = rss_kb(pid)  # the reference's backlog sits in its write buffers now
    drains = rig.ask([("drain", final, args.drain_timeout)] * len(rig.clients), timeout_s=args.drain_timeout + 30)
    after = cpu_snapshot(roles)
    wall = time.monotonic() - t0
    if profiler is not None:
        stop_profiler(profiler)
    frames = sum(d["frames"] for d in drains)
    last_at = max(d["last_at"] for d in drains)
    connections = sum(d["connections"] for d in drains)
    result = {
        "target": target, "subscribers": subscribers, **opened,
        "published": published, "publish_s": round(publish_s, 2),
        "published_per_s": round(published / publish_s, 1) if publish_s else 0.0,
        "frames": frames, "deliver_s": round(last_at - t0, 2) if last_at else 0.0,
        "last_version_lag_s": round(last_at - t0 - publish_s, 2) if last_at else 0.0,
        "deliveries_per_s": round(per_second(frames, t0, last_at), 1),
        "distinct_per_subscriber": round(sum(d["distinct"] for d in drains) / max(connections, 1), 1),
        "frames_per_subscriber_min": min(d["per_conn_min"] for d in drains),
        "frames_per_subscriber_max": max(d["per_conn_max"] for d in drains),
        "reached_last_version": sum(d["reached"] for d in drains), "connections": connections,
        "server_rss_kb_at_publish_end": rss_published,
        "cpu": cpu_split(before, after, wall),
    }
    result["server_cpu_us_per_frame"] = cpu_per_frame_us(result)
    close_connections(rig, target)
    return result


# ---------------------------------------------------------------- output

def print_connections(rows: list[dict[str, Any]]) -> None:
    print(f"{'connections':<12}{'opened':>8}{'held':>8}{'failed':>8}{'open s':>8}{'RSS before':>12}"
          f"{'RSS after':>11}{'KB/conn':>9}")
    for r in rows:
        print(f"{r['target']:<12}{r['opened']:>8}{r['held']:>8}{r['failed']:>8}{r['open_s']:>8.1f}"
              f"{r['rss_before_kb'] / 1024:>9.1f} MB{r['rss_after_kb'] / 1024:>8.1f} MB{r['kb_per_connection']:>9.2f}")
        if r["errors"]:
            print(f"{'':<12}errors: {r['errors']}")


def print_fanout(rows: list[dict[str, Any]]) -> None:
    print(f"{'fan-out':<12}{'subs':>6}{'published':>10}{'/s':>8}{'frames':>10}{'distinct/sub':>13}"
          f"{'reached':>9}{'deliver s':>10}{'lag s':>7}{'deliveries/s':>14}")
    for r in rows:
        print(f"{r['target']:<12}{r['subscribers']:>6}{r['published']:>10}{r['published_per_s']:>8.0f}"
              f"{r['frames']:>10}{r['distinct_per_subscriber']:>13.1f}{r['reached_last_version']:>9}"
              f"{r['deliver_s']:>10.2f}{r['last_version_lag_s']:>7.2f}{r['deliveries_per_s']:>14.0f}")
        if r["failed"]:
            print(f"{'':<12}only {r['opened']} of {r['subscribers']} subscribers connected: {r['errors']}")
    print("CPU seconds during each fan-out phase (2 cores = 2 CPU-seconds per wall second):")
    for r in rows:
        cpu = r["cpu"]
        parts = ", ".join(f"{role} {sec:.1f}" for role, sec in cpu["processes_cpu_s"].items())
        print(f"  {r['target']:<10}{r['subscribers']:>6} subs, {cpu['wall_s']:.1f}s wall: {parts}; "
              f"machine busy {cpu['machine_busy_s']:.1f}, other processes {cpu['other_cpu_s']:.1f}; "
              f"server CPU per frame {r['server_cpu_us_per_frame']:.1f} us")


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    by = {(r["target"], r["subscribers"]): r["deliveries_per_s"] for r in rows}
    return {str(subs): round(by[("freshwire", subs)] / by[("reference", subs)], 3)
            for (target, subs) in by if target == "freshwire" and by.get(("reference", subs))}


def plot(connections: list[dict[str, Any]], fanout: list[dict[str, Any]], ratio: dict[str, float],
         name: str) -> None:
    plt = report.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    subs = sorted({r["subscribers"] for r in fanout})
    width = 0.38
    for offset, (target, color) in enumerate((("freshwire", "tab:blue"), ("reference", "tab:gray"))):
        rate = {r["subscribers"]: r["deliveries_per_s"] for r in fanout if r["target"] == target}
        bars = left.bar([i + (offset - 0.5) * width for i in range(len(subs))], [rate.get(n, 0) for n in subs],
                        width, label=target, color=color)
        left.bar_label(bars, fmt="{:,.0f}", fontsize=8)
    left.set_xticks(range(len(subs)), [f"{n:,} subscribers\n({ratio.get(str(n), 0):.2f}x)" for n in subs])
    left.set_ylabel("deliveries/s (frames received)")
    left.set_title("fan-out to one key: Freshwire vs broadcast()")
    left.legend()
    names = [f"{r['target']}\n({r['held']:,} held)" for r in connections]
    bars = right.bar(names, [r["kb_per_connection"] for r in connections],
                     color=["tab:blue", "tab:gray"][:len(names)])
    right.bar_label(bars, fmt="{:.1f} KB", fontsize=8)
    right.axhline(TARGET_KB_PER_CONNECTION, color="tab:red", linestyle="--",
                  label=f"target {TARGET_KB_PER_CONNECTION:g} KB")
    right.set_title("memory per connection (RSS)")
    right.set_ylabel("KB per connection")
    right.legend()
    report.save_figure(fig, name)


# ---------------------------------------------------------------- main

def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("--timeout reached")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--keys-per-connection", type=int, default=2)
    parser.add_argument("--subscribers", default="1000,5000", help="comma-separated subscriber counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="publish phase length")
    parser.add_argument("--rate", type=float, default=100.0, help="versions/s to publish (0: as fast as possible)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="longest wait, after publishing, for every subscriber to get the last version")
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--direct-writes", action="store_true",
                        help="run the gateway with FRESHWIRE_DIRECT_WRITES=1; results go to fanout-direct.json/.png")
    parser.add_argument("--redis-port", type=int, default=16679)
    parser.add_argument("--gateway-port", type=int, default=18380)
    parser.add_argument("--reference-port", type=int, default=18381)
    parser.add_argument("--state-dir", default="/tmp/fw-fanout")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the server during each publish phase (collapsed stacks in --state-dir)")
    parser.add_argument("--timeout", type=int, default=1800, help="hard limit for the whole run, seconds")
    args = parser.parse_args(argv)
    subscribers = counts(args.subscribers)
    wanted = max([args.connections, *subscribers]) + NOFILE_RESERVE
    nofile = raise_nofile(wanted)
    args.connections_requested = args.connections
    args.connections = fit_connections(args.connections, nofile)
    subscribers = [fit_connections(n, nofile) for n in subscribers]
    if nofile < wanted:
        print(f"warning: RLIMIT_NOFILE stays at {nofile} (its hard limit; raising that needs CAP_SYS_RESOURCE), "
              f"so a server process holds at most {nofile - SERVER_FILES} connections beside its other files: "
              f"opening {args.connections} (asked {args.connections_requested})", flush=True)
    s = replace(load_stack_settings(), state_dir=Path(args.state_dir), redis_port=args.redis_port,
                gateway_port=args.gateway_port)
    rig = Rig(s, args)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.timeout)
    connections: list[dict[str, Any]] = []
    fanout: list[dict[str, Any]] = []
    try:
        start_rig(rig, nofile)
        print(f"RLIMIT_NOFILE {nofile}; pids {rig.pids}, clients {list(rig.client_roles().values())}", flush=True)
        for target in ("freshwire", "reference"):
            connections.append(connections_phase(rig, target))
            print_connections(connections[-1:])
        for n in subscribers:
            for target in ("freshwire", "reference"):
                fanout.append(fanout_phase(rig, target, n))
                print_fanout(fanout[-1:])
    finally:
        signal.alarm(0)
        rig.stop()
    print()
    print_connections(connections)
    print_fanout(fanout)
    ratio = ratios(fanout)
    print("deliveries/s Freshwire / reference: " + ", ".join(f"{k} subs {v:.2f}x" for k, v in ratio.items()))
    verdicts = targets(connections, ratio)
    for t in verdicts:
        value = f"{t['value']:.2f}x reference" if t["unit"] == "x reference" else (
            f"{t['value']:.1f} KB" if t["unit"] == "KB" else f"{t['value']:,}")
        print(f"{t['name']}: {value} (target {t['target']}): {t['verdict']}")
    name = "fanout-direct" if args.direct_writes else "fanout"
    report.write_json(name, {
        "machine": report.machine_info(), "settings": {**vars(args), "rlimit_nofile": nofile,
                                                       "rlimit_nofile_wanted": wanted},
        "connections": connections, "fanout": fanout, "ratio": ratio,
        "targets": {"connections": TARGET_CONNECTIONS, "kb_per_connection": TARGET_KB_PER_CONNECTION,
                    "ratio": TARGET_RATIO, "verdicts": verdicts},
    })
    plot(connections, fanout, ratio, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

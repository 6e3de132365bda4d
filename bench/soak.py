"""Soak: memory and short-lived state under churn, against the real stack (`make soak`, 60 minutes).

    .venv/bin/python -m bench.soak [--minutes 60] [--rate 200] [--sample-s 10]

On 127.0.0.1 only, bounded in time and in clients. The soak starts its own gateway process (so its
counts are the soak's alone) and its own sink (posting every ops record to a receiver in this
process), on the stack's Postgres, Kafka, Connect, cdc consumer and Redis (started if not running,
and stopped after if it started them). Then:

- writes: one-row transactions at `--rate`/s on the soak's own 200 cards, all run long;
- churn: WebSocket sessions opened at `--sessions-per-s` (at most `--max-clients` at once), each one of
  `clean` (subscribe, await a recent write token, read a while, close), `abrupt` (the same, then the
  TCP connection is dropped without a close frame), `expiring` (a token that expires in 2-4 s: the
  gateway closes it with 4001), `await` (await a token that is never released; time out, or drop the
  connection mid-wait), `http_wait` (GET /v1/wait, some given up by the client mid-wait);
- faults part-way: Redis SIGKILLed and restarted at 25 % of the churn, the cdc consumer at 40 %;
- samples every `--sample-s`: RSS, open fds and threads of the gateway, cdc and sink, the gateway's
  asyncio tasks, connections, subscribed keys and awaits (its /metrics), Redis's memory and key count.

Phases: warm-up (churn for 5 % of the run, so pools and caches are filled), baseline (no clients),
churn, cool-down (no clients). Verdicts (bench/soak_core.py): RSS growth over the churn's second half
<= 1 MB per 10 minutes per process; the gateway's connections, subscribed keys and awaits at 0 after
the churn; fds, threads, tasks and Redis keys back at or under the baseline; once the writer stops and
the sink catches up (at most SINK_CATCH_UP_S), a sink batch POSTed for every committed write (distinct
versions: a batch sent twice counts once). Writes
bench/results/soak.json and soak.png (`--name` for another name); exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psycopg
import redis
import websockets
from confluent_kafka import Consumer, KafkaException, TopicPartition
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from bench import procfs, report
from bench.chaos import BUILDERS, restart
from bench.soak_core import Sample, Verdict, sink_verdict, verdicts
from clients.sink.core import IDEMPOTENCY_HEADER
from connectors import procs, services, stack
from connectors.stack_settings import REPO, StackSettings, load_stack_settings
from contract import topics
from gateway.auth import mint
from gateway.settings import DEV_SECRET

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", DEV_SECRET)
CARDS = 200
GATEWAY_NAME = "soak-gateway"
SUBPROTOCOL = "freshwire.v1"
KINDS: tuple[str, ...] = ("clean", "abrupt", "expiring", "await", "http_wait")
KIND_WEIGHTS: tuple[float, ...] = (4, 3, 1, 1, 1)
NEVER_RELEASED = "fw1:9999999999"   # the highest id a token may name (10 digits): far beyond this database
GAUGES = ("connections", "subscribed_keys", "awaits_pending", "await_tokens", "tasks")
UPDATE_SQL = "UPDATE cards SET title = %s WHERE id = %s RETURNING pg_current_xact_id()::text"
LONG_RUN_S = 600.0                     # churn this long or longer is judged on RSS and Redis's expiring keys too
QUIET_S = 5.0                          # after the clients stop, before a baseline or cool-down sample
SINK_START_S = 60.0                    # for the soak's new sink group to commit its starting offset
SINK_CATCH_UP_S = 60.0                 # after the writer stops, at most this long for the sink to POST its last writes


@dataclass(frozen=True)
class Plan:
    churn_s: float = 3600.0
    rate: float = 200.0
    sample_s: float = 10.0
    sessions_per_s: float = 10.0
    max_clients: int = 100
    cooldown_s: float = 60.0
    redis_restart_at: float = 0.25     # share of the churn phase
    cdc_restart_at: float = 0.40
    seed: int = 1

    @property
    def warmup_s(self) -> float:
        return max(10.0, 0.05 * self.churn_s)


@dataclass
class Churn:
    """What the sessions did, by kind and outcome (close codes, replies, exceptions)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    open_now: int = 0
    opened: int = 0

    def note(self, kind: str, outcome: str) -> None:
        self.outcomes[f"{kind}: {outcome}"] += 1


@dataclass
class Writer:
    s: StackSettings
    cards: list[int]
    rate: float
    stop: threading.Event = field(default_factory=threading.Event)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    commits: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def run(self) -> None:
        started, n = time.monotonic(), 0
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.s.app_dsn) as conn:
                    while not self.stop.is_set():
                        row = conn.execute(UPDATE_SQL, (f"soak {n}", self.cards[n % len(self.cards)])).fetchone()
                        conn.commit()
                        self.recent.append(str(row[0]))  # type: ignore[index]
                        self.commits += 1
                        n += 1
                        delay = started + n / self.rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
            except psycopg.Error as exc:
                self.errors[type(exc).__name__] += 1
                time.sleep(0.5)


class _Receiver(BaseHTTPRequestHandler):
    posts = 0
    versions: ClassVar[set[str]] = set()  # distinct Idempotency-Keys (batch versions): one sent twice counts once
    lock = threading.Lock()  # the server runs a thread per request

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            type(self).posts += 1
            type(self).versions.add(self.headers.get(IDEMPOTENCY_HEADER) or "")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def soak_cards(s: StackSettings) -> tuple[int, list[int]]:
    with psycopg.connect(s.app_dsn, autocommit=True) as conn:
        board = conn.execute("INSERT INTO boards (tenant_id, name) VALUES (1, 'soak') RETURNING id").fetchone()
        assert board is not None
        ids = [int(conn.execute("INSERT INTO cards (tenant_id, board_id, title) VALUES (1, %s, 'soak') RETURNING id",
                                (board[0],)).fetchone()[0]) for _ in range(CARDS)]  # type: ignore[index]
        return int(board[0]), ids


# ---------------------------------------------------------------- the sessions


async def _read_for(ws: ClientConnection, seconds: float) -> None:
    """Read (and drop) what the gateway sends for `seconds`, or until it closes the connection."""
    with contextlib.suppress(TimeoutError, websockets.exceptions.ConnectionClosed):
        async with asyncio.timeout(seconds):
            async for _message in ws:
                pass


async def session(kind: str, url: str, http_url: str, keys: list[str], writer: Writer, rng: random.Random,
                  churn: Churn) -> None:
    ttl = rng.randint(2, 4) if kind == "expiring" else 3600
    tok = mint(SECRET, "soak", ["card:*", "board:*"], ttl)
    if kind == "http_wait":
        target = writer.recent[-1] if writer.recent and rng.random() < 0.5 else NEVER_RELEASED[4:]
        give_up = rng.uniform(0.3, 3.0)
        async with httpx.AsyncClient(timeout=give_up) as http:
            try:
                r = await http.get(f"{http_url}/v1/wait", params={"token": f"fw1:{target}", "timeout_ms": 2000},
                                   headers={"Authorization": f"Bearer {tok}"})
                churn.note(kind, f"HTTP {r.status_code}")
            except httpx.TimeoutException:
                churn.note(kind, "given up mid-wait")
        return
    async with ws_connect(f"{url}?token={tok}", subprotocols=[Subprotocol(SUBPROTOCOL)],
                          open_timeout=10, close_timeout=2, max_size=2**20) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": keys}))
        if kind in ("clean", "abrupt") and writer.recent:
            await ws.send(json.dumps({"op": "await", "id": 2, "token": f"fw1:{writer.recent[-1]}", "timeout_ms": 3000}))
        if kind == "await":
            await ws.send(json.dumps({"op": "await", "id": 3, "token": NEVER_RELEASED,
                                      "timeout_ms": rng.randint(300, 3000)}))
        if kind == "expiring":
            await _read_for(ws, 30)
            churn.note(kind, f"closed {ws.close_code}")
            return
        await _read_for(ws, rng.uniform(0.5, 6.0))
        if ws.close_code is not None:
            churn.note(kind, f"closed by the gateway {ws.close_code}")
        elif kind == "abrupt" or (kind == "await" and rng.random() < 0.5):
            ws.transport.abort()
            churn.note(kind, "dropped")
        else:
            await ws.close()
            churn.note(kind, "closed 1000")


async def churn_loop(plan: Plan, url: str, http_url: str, keys: list[str], writer: Writer, churn: Churn,
                     stop: asyncio.Event) -> None:
    rng = random.Random(plan.seed)
    running: set[asyncio.Task[None]] = set()

    async def one(kind: str) -> None:
        churn.open_now += 1
        churn.opened += 1
        try:
            await session(kind, url, http_url, rng.sample(keys, rng.randint(1, 20)), writer, rng, churn)
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as exc:
            churn.note(kind, f"failed: {type(exc).__name__}")
        finally:
            churn.open_now -= 1

    while not stop.is_set():
        if len(running) < plan.max_clients:
            task = asyncio.create_task(one(rng.choices(KINDS, KIND_WEIGHTS)[0]))
            running.add(task)
            task.add_done_callback(running.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / plan.sessions_per_s)
    for task in list(running):
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


# ---------------------------------------------------------------- sampling


def gateway_gauges(text: str) -> dict[str, float]:
    found = {}
    for gauge in GAUGES:
        match = re.search(rf"^freshwire_gateway_{gauge} (\S+)$", text, re.MULTILINE)
        if match:
            found[gauge] = float(match.group(1))
    return found


def fd_kinds(pid: int) -> dict[str, int]:
    """Open fds by kind (socket, pipe, anon_inode:[eventpoll], file ...): which kind grows, if any."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":[", 1)[0] if ":[" in target else
                  (target if target.startswith("anon_inode:") else "file")] += 1
    return dict(kinds)


TCP_STATES = {"01": "established", "06": "time_wait", "08": "close_wait", "0A": "listen"}


def tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) of every TCP socket, from /proc/net/tcp and tcp6."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                found[f[9]] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16),
                               TCP_STATES.get(f[3], f[3]))
    return found


def socket_peers(pid: int, ports: dict[int, str], seen: dict[str, str]) -> dict[str, int]:
    """A process's TCP sockets by peer (`ports` names the well-known ones) and state: which grows.

    A connection reset by its peer (a SIGKILLed Redis) leaves the TCP tables while its fd stays open
    until the owner next uses it: `seen` (socket inode -> peer, kept by the caller across samples)
    still names its peer, as "<peer> closed"."""
    sockets, peers, still_open = tcp_sockets(), Counter[str](), {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if not target.startswith("socket:["):
                continue
            inode = target[8:-1]
            if (entry := sockets.get(inode)) is not None:
                local, remote, state = entry
                peer = ports.get(remote) or (f"clients of :{local}" if local in ports else f"port {remote}")
                still_open[inode] = peer
                peers[f"{peer} {state}"] += 1
            elif inode in seen:
                still_open[inode] = seen[inode]
                peers[f"{seen[inode]} closed"] += 1
    seen.clear()  # only the sockets still open: bounded by the process's fds
    seen.update(still_open)
    return dict(peers)


def proc_sample(pid: int | None, ports: dict[int, str] | None = None,
                seen: dict[str, str] | None = None) -> dict[str, Any] | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return {"pid": pid, "rss_kb": procfs.status_kb(status), "fds": procfs.fd_count(pid),
                "threads": procfs.status_kb(status, "Threads"),
                "cpu_s": round(procfs.cpu_seconds(pid), 2), "fd_kinds": fd_kinds(pid),
                **({"sockets": socket_peers(pid, ports, {} if seen is None else seen)} if ports else {})}
    except (OSError, AttributeError):
        return None


@dataclass
class Sampler:
    s: StackSettings
    gateway_port: int
    sink_pid: int
    started: float = field(default_factory=time.monotonic)
    phase: str = "warmup"
    samples: list[Sample] = field(default_factory=list)
    churn: Churn | None = None
    seen_sockets: dict[str, str] = field(default_factory=dict)  # the gateway's socket inode -> peer

    def sample(self) -> Sample:
        out: Sample = {"t": round(time.monotonic() - self.started, 1), "phase": self.phase}
        ports = {self.s.redis_port: "redis", self.gateway_port: "gateway", self.s.kafka_port: "kafka",
                 self.s.pg_port: "postgres"}
        gateway = proc_sample(procs.recorded_pid(self.s.pids_dir, GATEWAY_NAME), ports, self.seen_sockets)
        if gateway is not None:
            redis_sockets = sum(n for peer, n in gateway["sockets"].items() if peer.startswith("redis "))
            gateway.update(redis_sockets=redis_sockets, fds_but_redis=gateway["fds"] - redis_sockets)
            with contextlib.suppress(httpx.HTTPError):
                gateway.update(gateway_gauges(httpx.get(f"http://{self.s.host}:{self.gateway_port}/metrics",
                                                        timeout=5).text))
        out["gateway"] = gateway
        out["cdc"] = proc_sample(procs.recorded_pid(self.s.pids_dir, "cdc"), ports)
        out["sink"] = proc_sample(self.sink_pid, ports)
        try:
            r = redis.Redis(host=self.s.host, port=self.s.redis_port, socket_timeout=2)
            db = r.info("keyspace").get("db0", {"keys": 0, "expires": 0})
            keys, expiring = int(db["keys"]), int(db["expires"])
            out["redis"] = {"used_memory": int(r.info("memory")["used_memory"]), "keys": keys,
                            "persistent_keys": keys - expiring, "expiring_keys": expiring}
            r.close()
        except redis.RedisError:
            out["redis"] = None
        if self.churn is not None:
            out["clients_open"] = self.churn.open_now
        self.samples.append(out)
        return out

    async def every(self, period_s: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await loop.run_in_executor(None, self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)


# ---------------------------------------------------------------- faults and helpers


def kill_and_restart(s: StackSettings, name: str) -> float:
    """SIGKILL a stack part and start it again; returns how long until it was ready."""
    began = time.monotonic()
    if not procs.kill(name, s.pids_dir, port=BUILDERS[name](s).port):
        raise RuntimeError(f"{name} is not running")
    restart(s, name)
    return round(time.monotonic() - began, 2)


def wait_sink_positioned(bootstrap: str, group: str, pid: int) -> None:
    """Wait until the new sink group has committed its starting offset on the ops topic: a new group
    starts at the topic's end, so a write released before that would never be POSTed."""
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + SINK_START_S
        while time.monotonic() < deadline:
            if not procs.alive(pid):
                raise RuntimeError("the soak's sink exited during start (logs: soak-sink.log)")
            try:
                if any(tp.offset >= 0 for tp in probe.committed([TopicPartition(topics.OPS, 0)], timeout=5)):
                    return
            except KafkaException:  # the broker did not answer in time: ask again until the deadline
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the soak's sink was not positioned on {topics.OPS} after {SINK_START_S:.0f} s")
    finally:
        probe.close()


@contextlib.contextmanager
def soak_parts(s: StackSettings, gateway_port: int) -> Iterator[tuple[int, type[_Receiver]]]:
    """The soak's own gateway, receiver and sink; all stopped at the end (only what was started here)."""
    gateway = services.gateway_proc(s, GATEWAY_NAME, gateway_port)
    procs.start(gateway, s.pids_dir)
    receiver = type("Receiver", (_Receiver,), {"posts": 0, "versions": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver)
    threading.Thread(target=server.serve_forever, name="soak-receiver", daemon=True).start()
    group = f"freshwire-soak-{os.getpid()}-{int(time.time())}"
    env = {**os.environ, "FRESHWIRE_SINK_URL": f"http://127.0.0.1:{server.server_address[1]}/purge",
           "FRESHWIRE_SINK_SECRET": "soak-secret", "FRESHWIRE_SINK_BOOTSTRAP": s.kafka_bootstrap,
           "FRESHWIRE_SINK_GROUP": group, "PYTHONUNBUFFERED": "1"}
    s.logs_dir.mkdir(parents=True, exist_ok=True)
    with open(s.logs_dir / "soak-sink.log", "ab") as log:
        sink = subprocess.Popen([sys.executable, "-m", "clients.sink"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)
    try:
        procs.wait_ready(gateway)
        wait_sink_positioned(s.kafka_bootstrap, group, sink.pid)
        yield sink.pid, receiver
    finally:
        sink.terminate()
        try:
            sink.wait(timeout=20)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
        server.shutdown()
        server.server_close()
        procs.stop(GATEWAY_NAME, s.pids_dir, timeout_s=20)


async def sink_caught_up(receiver: type[_Receiver], commits: int) -> tuple[int, float]:
    """Wait (at most SINK_CATCH_UP_S) until the receiver has a batch for every committed write; returns the
    distinct batches (versions) POSTed and the seconds waited. The writer runs to the last sample, so
    its last writes are still on their way through Debezium, Kafka, the consumer and the sink when it
    stops."""
    began = time.monotonic()
    while len(receiver.versions) < commits and time.monotonic() - began < SINK_CATCH_UP_S:
        await asyncio.sleep(0.2)
    return len(receiver.versions), round(time.monotonic() - began, 1)


async def _phase(sampler: Sampler, name: str, seconds: float) -> None:
    sampler.phase = name
    await asyncio.sleep(seconds)


async def run_soak(s: StackSettings, plan: Plan, log: Any = print) -> dict[str, Any]:
    """The whole soak against a running stack; returns its record (samples, faults, churn, verdicts)."""
    gateway_port = free_port()
    _board, cards = soak_cards(s)
    keys = [f"card:{c}" for c in cards] + [f"board:{_board}"]
    writer = Writer(s, cards, plan.rate)
    thread = threading.Thread(target=writer.run, name="soak-writer", daemon=True)
    faults: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    with soak_parts(s, gateway_port) as (sink_pid, receiver):
        url, http_url = f"ws://{s.host}:{gateway_port}/ws", f"http://{s.host}:{gateway_port}"
        churn = Churn()
        sampler = Sampler(s, gateway_port, sink_pid, churn=churn)
        thread.start()
        stop_sampling = asyncio.Event()
        sampling = asyncio.create_task(sampler.every(plan.sample_s, stop_sampling))

        async def churn_for(seconds: float, faults_at: dict[str, float]) -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(churn_loop(plan, url, http_url, keys, writer, churn, stop))
            began = time.monotonic()
            for name, share in sorted(faults_at.items(), key=lambda kv: kv[1]):
                await asyncio.sleep(max(0.0, began + share * seconds - time.monotonic()))
                log(f"soak: SIGKILL {name} and restart it ({sampler.sample()['t']} s)")
                ready_s = await loop.run_in_executor(None, kill_and_restart, s, name)
                faults.append({"part": name, "at_s": round(time.monotonic() - sampler.started, 1), "ready_s": ready_s})
            await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))
            stop.set()
            await task

        log(f"soak: warm-up {plan.warmup_s:.0f} s")
        await churn_for(plan.warmup_s, {})
        await _phase(sampler, "baseline", QUIET_S)
        for _ in range(3):  # a baseline of three samples: a count that flickers shows its high side
            await loop.run_in_executor(None, sampler.sample)
            await asyncio.sleep(min(plan.sample_s, 2.0))
        log(f"soak: churn {plan.churn_s:.0f} s at {plan.rate:g} tx/s")
        sampler.phase = "churn"
        await churn_for(plan.churn_s, {"redis": plan.redis_restart_at, "cdc": plan.cdc_restart_at})
        await _phase(sampler, "cooldown", max(QUIET_S, plan.cooldown_s))
        stop_sampling.set()
        await sampling
        await loop.run_in_executor(None, sampler.sample)
        writer.stop.set()
        thread.join(timeout=10)
        batches, sink_wait_s = await sink_caught_up(receiver, writer.commits)
        posts = receiver.posts
    # RSS slopes and the markers' expiry need minutes to show; a short run (the test's) judges counts only.
    long_run = plan.churn_s >= LONG_RUN_S
    found = [*verdicts(sampler.samples, rss=long_run, write_rate=plan.rate if long_run else 0.0),
             sink_verdict(writer.commits, batches)]
    return {"plan": asdict(plan), "samples": sampler.samples, "faults": faults,
            "churn": {"opened": churn.opened, "outcomes": dict(sorted(churn.outcomes.items()))},
            "writes": {"commits": writer.commits, "errors": dict(writer.errors)}, "sink_posts": posts,
            "sink_batches": batches, "sink_wait_s": sink_wait_s,
            "verdicts": [v.as_dict() for v in found], "met": all(v.met for v in found)}


def plot(record: dict[str, Any], name: str = "soak") -> None:
    plt = report.pyplot()
    samples = record["samples"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    t = [s["t"] / 60 for s in samples]

    def series(part: str, f: str, scale: float = 1.0) -> list[float | None]:
        return [(s[part][f] / scale) if s.get(part) and s[part].get(f) is not None else None for s in samples]

    for proc in ("gateway", "cdc", "sink"):
        axes[0].plot(t, series(proc, "rss_kb", 1024), label=proc)
        axes[1].plot(t, series(proc, "fds"), label=f"{proc} fds")
    axes[2].plot(t, series("gateway", "tasks"), label="gateway asyncio tasks")
    axes[2].plot(t, series("gateway", "connections"), label="gateway connections")
    axes[2].plot(t, series("gateway", "awaits_pending"), label="gateway awaits pending")
    axes[3].plot(t, series("redis", "used_memory", 2**20), label="Redis used_memory MB")
    axes[3].plot(t, series("redis", "keys", 100), label="Redis keys / 100")
    for ax, label in zip(axes, ("RSS MB", "open fds", "count", "Redis"), strict=True):
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize=8)
        for fault in record["faults"]:
            ax.axvline(fault["at_s"] / 60, color="red", linestyle=":", linewidth=1)
        ends = [s["t"] / 60 for a, s in itertools.pairwise(samples) if a["phase"] != s["phase"]]
        for x in ends:
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    axes[3].set_xlabel("minutes (dashed: phase changes; red dotted: Redis, then cdc SIGKILLed and restarted)")
    fig.suptitle("Soak: memory and short-lived state under churn")
    report.save_figure(fig, name)


async def until_signalled(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run `work`; SIGTERM or SIGINT cancels it, so its own gateway and sink are stopped on the way out
    (a background job's SIGINT may be ignored: SIGTERM is the one to send)."""
    loop, task = asyncio.get_running_loop(), asyncio.ensure_future(work)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    return await task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the churn phase")
    parser.add_argument("--rate", type=float, default=200.0, help="write transactions per second")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--sessions-per-s", type=float, default=10.0)
    parser.add_argument("--max-clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", default="soak", help="bench/results/<name>.json and .png")
    args = parser.parse_args(argv)
    plan = Plan(churn_s=args.minutes * 60, rate=args.rate, sample_s=args.sample_s,
                sessions_per_s=args.sessions_per_s, max_clients=args.max_clients, seed=args.seed)
    s = load_stack_settings()
    started = stack.up(s, with_apps=True, quiet=True)
    try:
        record = asyncio.run(until_signalled(run_soak(s, plan)))
    except asyncio.CancelledError:
        print("soak: stopped by a signal; what it started is stopped", file=sys.stderr)
        return 130
    finally:
        stack.down(s, only=started, quiet=True)
    record["machine"] = report.machine_info()
    report.write_json(args.name, record)
    plot(record, args.name)
    print(f"churn: {record['churn']['opened']} sessions; writes: {record['writes']['commits']}; "
          f"sink posts: {record['sink_posts']}; faults: {record['faults']}")
    for v in record["verdicts"]:
        print(Verdict(**v).line())
    return 0 if record["met"] else 1


if __name__ == "__main__":
    sys.exit(main())

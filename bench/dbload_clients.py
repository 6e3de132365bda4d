"""bench/dbload.py's dashboard clients: all clients of one arm in one child process, on one asyncio loop.

- poll: client i polls its board's cards query every interval on its own connection (staggered).
- direct: client i holds a WebSocket subscription to its board's card keys through the real gateway
  and, on each invalidation, refetches the changed card by id on its own connection.
- cached: as direct, but the refetch goes through one SharedCache (bench/dbload_cache.py) that all
  clients share, reading Postgres on one connection: one read per (key, version).

A refetch that reads the card older than the transaction its invalidation announced (the writer
sends each transaction's token position, card and version to this process just before its COMMIT,
so it knows) is retried once after STALE_RETRY_S; both counts are reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, LiteralString

import psycopg
import websockets

from bench.dbload_cache import SharedCache
from bench.dbload_metrics import CommitIndex
from demo.store import CARD_FIELDS
from gateway.auth import mint
from gateway.protocol import SUBPROTOCOL

SECRET = os.environ.get("FRESHWIRE_JWT_SECRET", "freshwire-dev-secret-change-me-in-production")
TENANT = 1
BOARD_SQL = f"SELECT {CARD_FIELDS} FROM cards WHERE board_id = %s ORDER BY id"   # Store.board's cards
CARD_SQL = f"SELECT {CARD_FIELDS} FROM cards WHERE id = %s"                      # Store.card
VERSION_COLUMN = 6   # of CARD_FIELDS
CLIENT_READY_S = 90.0
SUBSCRIBE_S = 10.0
RECV_S = 0.5
STALE_RETRY_S = 0.005
STOP_S = 15.0
Mode = Literal["poll", "direct", "cached", "pushed"]
POLL_CONNECTIONS = 40   # polling clients share this many connections at most (client i on i mod 40)
Row = tuple[Any, ...]


@dataclass(frozen=True)
class ClientPlan:
    mode: Mode
    dsn: str
    ws_url: str
    boards: dict[int, list[int]]
    clients: int
    interval_s: float
    deadline: float   # time.time() past which the child gives up on its own


@dataclass
class ClientLog:
    reads: list[tuple[float, int, int]] = field(default_factory=list)   # (t, card, version) the client holds
    receipts: list[tuple[float, str]] = field(default_factory=list)     # (t, invalidation version)
    error: str = ""


@dataclass
class ReadLog:
    """The arm's Postgres reads by the client side (every client, and the shared cache)."""
    queries: list[float] = field(default_factory=list)                  # when each read returned
    refetches: list[tuple[str, int, int]] = field(default_factory=list)  # (invalidation version, card, first read)
    retried: int = 0              # refetches seen to be older than announced, read again after STALE_RETRY_S
    stale_after_retry: int = 0    # ... and still older on the second read
    cache_loads: int = 0
    cache_hits: int = 0
    pushed_rows: int = 0          # freshwire-pushed: keys applied from an invalidate's `data`
    pushed_fallbacks: int = 0     # ... and keys that came without data, refetched through the cache


@dataclass
class ArmResult:
    clients: list[ClientLog]
    reads: ReadLog


async def _read(conn: psycopg.AsyncConnection[Any], sql: LiteralString, param: int, log: ReadLog) -> list[Row]:
    rows = await (await conn.execute(sql, (param,))).fetchall()
    log.queries.append(time.time())
    return rows


async def refetch(conn: psycopg.AsyncConnection[Any], card: int, version: str, commits: CommitIndex,
                  log: ReadLog, sync: Callable[[], None] = lambda: None) -> Row | None:
    """The card after an invalidation at `version`, read again once if older than that announced.
    `sync` brings `commits` up to date first."""
    rows = await _read(conn, CARD_SQL, card, log)
    if not rows:
        return None
    log.refetches.append((version, card, rows[0][VERSION_COLUMN]))
    sync()
    expected = commits.expected(version, card)
    if expected is None or rows[0][VERSION_COLUMN] >= expected:
        return rows[0]
    log.retried += 1
    await asyncio.sleep(STALE_RETRY_S)
    rows = await _read(conn, CARD_SQL, card, log) or rows
    log.stale_after_retry += rows[0][VERSION_COLUMN] < expected
    return rows[0]


@dataclass
class Shared:
    """What the clients of one arm share: the commit index, the read log, and in the cached arm the
    cache and its connection."""
    commits: CommitIndex
    reads: ReadLog
    sync: Callable[[], None]
    conn: psycopg.AsyncConnection[Any] | None = None
    cache: SharedCache[Row | None] | None = None
    poll_conns: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)


async def _poller(plan: ClientPlan, i: int, board: int, log: ClientLog, ready: asyncio.Event,
                  stop: asyncio.Event, shared: Shared) -> None:
    conn = shared.poll_conns[i % len(shared.poll_conns)]

    async def poll() -> None:
        rows = await _read(conn, BOARD_SQL, board, shared.reads)
        t = time.time()
        log.reads.extend((t, r[0], r[VERSION_COLUMN]) for r in rows)

    await poll()
    ready.set()
    start = time.monotonic() + plan.interval_s * i / plan.clients   # staggered over the interval
    k = 0
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, start + k * plan.interval_s - time.monotonic()))
            return
        await poll()
        k += 1


async def _listener(plan: ClientPlan, i: int, board: int, log: ClientLog, ready: asyncio.Event,
                    stop: asyncio.Event, shared: Shared) -> None:
    keys = {f"tenant:{TENANT}:card:{c}": c for c in plan.boards[board]}
    token = mint(SECRET, f"dbload-{i}", [f"tenant:{TENANT}:*"], 3600)
    async with contextlib.AsyncExitStack() as stack:
        conn = shared.conn if shared.conn is not None else await stack.enter_async_context(
            await psycopg.AsyncConnection.connect(plan.dsn, autocommit=True))
        ws = await stack.enter_async_context(websockets.connect(
            f"{plan.ws_url}?token={token}", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            max_queue=None, open_timeout=10))
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": list(keys)}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), SUBSCRIBE_S))
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribe refused: {reply}")
        rows = await (await conn.execute(BOARD_SQL, (board,))).fetchall()   # the first load, as the demo
        log.reads.extend((time.time(), r[0], r[VERSION_COLUMN]) for r in rows)
        cache = shared.cache

        def fetch(key: str, version: str) -> Awaitable[Row | None]:
            return cache.get(key, version) if cache else refetch(conn, keys[key], version, shared.commits,
                                                                  shared.reads, shared.sync)

        ready.set()
        while not stop.is_set():
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), RECV_S))
            except TimeoutError:
                continue
            if message.get("type") != "invalidate":
                continue
            t = time.time()
            data = (message.get("data") or {}) if plan.mode == "pushed" else {}
            for key, version in message["keys"].items():
                log.receipts.append((t, version))
                if key not in keys:
                    continue
                if isinstance(pushed := data.get(key), dict) and "version" in pushed:
                    shared.reads.pushed_rows += 1
                    log.reads.append((t, keys[key], int(pushed["version"])))
                    continue
                shared.reads.pushed_fallbacks += plan.mode == "pushed"
                if (row := await fetch(key, version)) is not None:
                    log.reads.append((time.time(), row[0], row[VERSION_COLUMN]))


def _card_of(key: str) -> int:
    return int(key.rsplit(":", 1)[1])


async def _clients(plan: ClientPlan, pipe: Connection, commit_pipe: Connection) -> ArmResult:
    logs = [ClientLog() for _ in range(plan.clients)]
    readies = [asyncio.Event() for _ in logs]
    stop = asyncio.Event()
    commits = CommitIndex()

    def take_commits() -> None:
        while commit_pipe.poll():
            commits.add(*commit_pipe.recv())

    shared = Shared(commits, ReadLog(), take_commits)

    loop = asyncio.get_running_loop()
    loop.add_reader(commit_pipe.fileno(), take_commits)
    async with contextlib.AsyncExitStack() as resources:
        if plan.mode == "poll":
            for _ in range(min(plan.clients, POLL_CONNECTIONS)):
                shared.poll_conns.append(await resources.enter_async_context(
                    await psycopg.AsyncConnection.connect(plan.dsn, autocommit=True)))
        if plan.mode in ("cached", "pushed"):
            conn = await resources.enter_async_context(
                await psycopg.AsyncConnection.connect(plan.dsn, autocommit=True))
            shared.conn = conn

            async def load(key: str, version: str) -> Row | None:
                return await refetch(conn, _card_of(key), version, commits, shared.reads, take_commits)

            shared.cache = SharedCache(load)
        board_ids = sorted(plan.boards)
        body: Callable[..., Awaitable[None]] = _poller if plan.mode == "poll" else _listener

        async def guarded(i: int) -> None:
            try:
                await body(plan, i, board_ids[i % len(board_ids)], logs[i], readies[i], stop, shared)
            except Exception as exc:
                logs[i].error = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                readies[i].set()

        tasks = [asyncio.create_task(guarded(i)) for i in range(plan.clients)]
        for r in readies:
            await r.wait()
        pipe.send("ready")
        while not pipe.poll() and time.time() < plan.deadline:
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait(tasks, timeout=STOP_S)
    loop.remove_reader(commit_pipe.fileno())
    if shared.cache is not None:
        shared.reads.cache_loads, shared.reads.cache_hits = shared.cache.loads, shared.cache.hits
    return ArmResult(logs, shared.reads)


def run_clients(plan: ClientPlan, pipe: Connection, commit_pipe: Connection) -> None:
    """The child process: every client of one arm, on one asyncio loop."""
    pipe.send(asyncio.run(_clients(plan, pipe, commit_pipe)))


@contextlib.contextmanager
def client_process(plan: ClientPlan) -> Iterator[tuple[multiprocessing.process.BaseProcess, Connection, Connection]]:
    """The clients' process, ready (every client subscribed or polling); yields it, the control pipe
    and the pipe that takes (WAL position, card, version) of each commit."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    commits_in, commits_out = ctx.Pipe(duplex=False)
    child = ctx.Process(target=run_clients, args=(plan, theirs, commits_in), name=f"dbload-{plan.mode}",
                        daemon=True)
    child.start()
    try:
        if not ours.poll(CLIENT_READY_S) or ours.recv() != "ready":
            raise TimeoutError("clients not ready")
        yield child, ours, commits_out
    finally:
        child.join(20)
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
            child.join(5)

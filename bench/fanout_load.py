"""bench/fanout.py's load generator: one process holding thousands of `websockets` asyncio client
connections, driven over a multiprocessing pipe.

Commands (tuples) and replies (dicts):
- ("open", url, n, first, keys_per_conn, fan_key, subprotocol, local_ip, timeout_s): open `n`
  connections; connection i subscribes to `[fan_key]` if given, else to
  `connection_keys(first + i, keys_per_conn)`, and waits for `subscribed` (no subscribe when there are
  no keys: the reference has no subscriptions) -> {"opened", "failed", "errors"}
- ("reset",): zero the frame counters -> {}
- ("drain", final_version, timeout_s): wait until every connection has seen `final_version` (or the
  timeout) -> {"connections", "reached", "frames", "distinct", "first_at", "last_at", "per_conn_*"}
- ("close", timeout_s): close every connection -> {"closed"}
- ("exit",): stop

A frame counts once per connection; its version is the first 16-hex string in it (the gateway's
`invalidate` for one key, or the reference's raw Redis message, where `v` and `wm` are equal).
Times are time.monotonic(), which is CLOCK_MONOTONIC and so comparable between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

VERSION_IN_FRAME = re.compile(r'"([0-9a-f]{16})"')
OPEN_CONCURRENCY = 100
CLOSE_CHUNK = 500
DRAIN_POLL_S = 0.02


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to `wanted` (and the hard limit too, when privileged);
    returns the soft limit in force. Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = max(soft, min(wanted, hard))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def connection_keys(i: int, keys_per_conn: int) -> list[str]:
    """Connection i's keys: one of its own, then keys shared by groups of connections."""
    if keys_per_conn <= 0:
        return []
    return [f"bench:u{i}"] + [f"bench:g{j}:{i % 100}" for j in range(keys_per_conn - 1)]


def version_in(frame: str) -> str | None:
    match = VERSION_IN_FRAME.search(frame)
    return match.group(1) if match else None


class Tally:
    """One connection's view of the publish phase."""

    __slots__ = ("distinct", "frames", "last", "last_at")

    def __init__(self) -> None:
        self.frames = 0
        self.distinct = 0
        self.last = ""
        self.last_at = 0.0


class Load:
    def __init__(self) -> None:
        self.conns: list[tuple[ClientConnection, Tally, asyncio.Task[None]]] = []
        self.first_at = 0.0

    async def _read(self, ws: ClientConnection, tally: Tally) -> None:
        with contextlib.suppress(Exception):
            async for frame in ws:
                now = time.monotonic()
                if not self.first_at:
                    self.first_at = now
                tally.frames += 1
                tally.last_at = now
                version = version_in(frame if isinstance(frame, str) else frame.decode())
                if version is not None and version > tally.last:
                    tally.distinct += 1
                    tally.last = version

    async def _open_one(self, url: str, keys: list[str], subprotocol: str, local_ip: str, timeout_s: float) -> None:
        ws = await connect(url, subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
                           compression=None, ping_interval=None, open_timeout=timeout_s, close_timeout=2,
                           max_size=2**20, local_addr=(local_ip, 0) if local_ip else None)
        try:
            if keys:
                await ws.send(json.dumps({"op": "subscribe", "id": 1, "keys": keys}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
                if reply.get("type") != "subscribed":
                    raise RuntimeError(f"subscribe refused: {reply}")
        except BaseException:
            ws.transport.abort()
            raise
        tally = Tally()
        self.conns.append((ws, tally, asyncio.create_task(self._read(ws, tally))))

    async def open(self, url: str, n: int, first: int, keys_per_conn: int, fan_key: str, subprotocol: str,
                   local_ip: str, timeout_s: float) -> dict[str, Any]:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        errors: dict[str, int] = {}

        async def one(i: int) -> bool:
            async with gate:
                try:
                    keys = [fan_key] if fan_key else connection_keys(first + i, keys_per_conn)
                    await self._open_one(url, keys, subprotocol, local_ip, timeout_s)
                    return True
                except Exception as exc:
                    name = type(exc).__name__ + (f": {exc}"[:80] if str(exc) else "")
                    errors[name] = errors.get(name, 0) + 1
                    return False

        done = await asyncio.gather(*(one(i) for i in range(n)))
        return {"opened": sum(done), "failed": n - sum(done), "errors": errors}

    def reset(self) -> dict[str, Any]:
        self.first_at = 0.0
        for _ws, tally, _task in self.conns:
            tally.frames = tally.distinct = 0
            tally.last_at = 0.0
        return {}

    async def drain(self, final: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        tallies = [t for _ws, t, _task in self.conns]
        while time.monotonic() < deadline and not all(t.last >= final for t in tallies):
            await asyncio.sleep(DRAIN_POLL_S)
        frames = [t.frames for t in tallies]
        return {"connections": len(tallies), "reached": sum(t.last >= final for t in tallies),
                "frames": sum(frames), "distinct": sum(t.distinct for t in tallies),
                "first_at": self.first_at, "last_at": max((t.last_at for t in tallies), default=0.0),
                "per_conn_min": min(frames, default=0), "per_conn_max": max(frames, default=0)}

    async def close(self, timeout_s: float) -> dict[str, Any]:
        conns, self.conns = self.conns, []
        for i in range(0, len(conns), CLOSE_CHUNK):
            chunk = conns[i:i + CLOSE_CHUNK]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(ws.close() for ws, _t, _task in chunk),
                                                      return_exceptions=True), timeout_s)
            for ws, _tally, task in chunk:
                ws.transport.abort()
                task.cancel()
        return {"closed": len(conns)}


async def _serve(pipe: Connection) -> None:
    load = Load()
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        op, args = command[0], command[1:]
        if op == "exit":
            await load.close(2.0)
            return
        if op == "open":
            reply = await load.open(*args)
        elif op == "reset":
            reply = load.reset()
        elif op == "drain":
            reply = await load.drain(*args)
        elif op == "close":
            reply = await load.close(*args)
        else:
            reply = {"error": f"unknown command {op!r}"}
        pipe.send(reply)


def client_main(pipe: Connection, nofile: int) -> None:
    """The entry point of one load-generator process."""
    raise_nofile(nofile)
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        asyncio.run(_serve(pipe))

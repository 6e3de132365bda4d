"""Many gateways, exact resume, Redis restarts and slow clients, on the real stack."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import threading
import urllib.request

import psycopg
import websockets
from websockets.typing import Subprotocol

from connectors import procs, services
from connectors.stack_settings import StackSettings
from gateway.client import Client
from tests.e2e.helpers import (
    CardWriter,
    assert_in_order_once,
    client,
    floors,
    new_board,
    new_card,
    settle,
    token,
    until,
    write,
    ws_url,
)


async def test_e2e_two_gateways_and_exact_resume_on_the_other(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    cards = [new_card(s, board) for _ in range(3)]
    keys = [f"card:{c}" for c in cards]
    a = client(s, ["card:*"], port=s.gateway_port)
    b = client(s, ["card:*"], port=s.gateway2_port)
    async with a, b:
        for c in (a, b):
            await c.subscribe(keys)
            await settle(c, {k: floors[k] for k in keys})
        write(s, "UPDATE cards SET status = 'doing' WHERE id = %s", (cards[0],))
        got_a, got_b = await a.next_batch(20), await b.next_batch(20)
        assert got_a == got_b and set(got_a) == {keys[0]}
        seen = dict(a.versions)
    # a is gone; three transactions commit (cards[1] twice, cards[2] once, cards[0] untouched)
    write(s, "UPDATE cards SET status = 'review' WHERE id = %s", (cards[1],))
    write(s, "UPDATE cards SET status = 'done' WHERE id = %s", (cards[2],))
    _tx, inside, after = write(s, "UPDATE cards SET status = 'done' WHERE id = %s", (cards[1],))
    await asyncio.sleep(1.0)  # let them be released while nobody listens
    async with websockets.connect(f"{ws_url(s, s.gateway2_port)}?token={token(['card:*'])}",
                                  subprotocols=[Subprotocol("freshwire.v1")]) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": 7, "keys": keys, "since": seen}))
        reply = json.loads(await ws.recv())
        assert reply["type"] == "subscribed" and reply["id"] == 7
        missed = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert missed["type"] == "invalidate"
        assert set(missed["keys"]) == {keys[1], keys[2]}          # exactly the missed keys
        assert inside < missed["keys"][keys[1]] <= after          # at the latest version
        assert missed["keys"][keys[2]] > seen[keys[2]]
        await ws.send(json.dumps({"op": "ping", "id": 8}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "id": 8}  # nothing else queued


async def test_e2e_redis_restart_mid_stream_loses_nothing(stack_settings: StackSettings) -> None:
    s = stack_settings
    board = new_board(s)
    cards = [new_card(s, board) for _ in range(4)]
    keys = [f"card:{c}" for c in cards]
    writer = CardWriter(s, cards, limit=300)

    async with client(s, ["card:*"], port=s.gateway_port) as c1, client(s, ["card:*"], port=s.gateway2_port) as c2:
        for c in (c1, c2):
            await c.subscribe(keys)
            await settle(c, {k: floors[k] for k in keys})
        writer.start()
        try:
            await asyncio.sleep(0.5)
            pid = procs.recorded_pid(s.pids_dir, "redis")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(1.0)
            proc = services.redis_proc(s)
            procs.start(proc, s.pids_dir)
            procs.wait_ready(proc)
            await asyncio.sleep(0.5)
        finally:
            writer.finish()
        for c in (c1, c2):
            await until(functools.partial(writer.reached_by, c), timeout_s=60,
                        what="latest versions after a Redis restart")
            assert_in_order_once(c.received)
    await until(lambda: _ready(s.gateway_url) and _ready(f"http://{s.host}:{s.gateway2_port}"),
                what="gateways ready again")


def _ready(base: str) -> bool:
    try:
        return services.http_ok(f"{base}/readyz")
    except OSError:
        return False


def _queue_depth(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("freshwire_gateway_queue_depth "):
                return float(line.split()[1])
    raise AssertionError("no queue depth metric")


async def test_e2e_client_that_stops_reading_stays_bounded_then_catches_up(stack_settings: StackSettings) -> None:
    """10k invalidations over 100 keys to a client that does not read: its pending queue never holds
    more than one entry per subscribed key; once it reads again it ends at the latest versions."""
    s = stack_settings
    board = new_board(s)
    cards = [new_card(s, board) for _ in range(100)]
    keys = [f"card:{c}" for c in cards]
    base = f"http://{s.host}:{s.gateway2_port}"
    reader = Client(ws_url(s, s.gateway2_port), token=token(["card:*"]), record=True)
    async with reader:
        await reader.subscribe(keys)
        await settle(reader, {k: floors[k] for k in keys})
    url = f"{ws_url(s, s.gateway2_port)}?token={token(['card:*'])}"
    async with websockets.connect(url, subprotocols=[Subprotocol("freshwire.v1")], max_queue=1) as slow:
        await slow.send(json.dumps({"op": "subscribe", "id": 1, "keys": keys}))
        assert json.loads(await slow.recv())["type"] == "subscribed"
        depths: list[float] = []
        done = threading.Event()
        last: dict[int, tuple[str, str]] = {}

        def flood() -> None:
            with psycopg.connect(s.app_dsn, autocommit=True) as conn:
                for n in range(10_000):
                    conn.execute("UPDATE cards SET version = version + 1 WHERE id = %s", (cards[n % 100],))
                    if n >= 9_900:
                        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                        assert row is not None
                        last[cards[n % 100]] = ("", str(row[0]))
            done.set()

        thread = threading.Thread(target=flood)
        thread.start()
        while not done.is_set():
            depths.append(_queue_depth(base))
            await asyncio.sleep(0.05)
        thread.join()
        await asyncio.sleep(1.0)
        depths.append(_queue_depth(base))
        # one pending entry per subscribed key (+ the few replies) is the most the server may hold
        assert max(depths) <= len(keys) + 5, max(depths)
        # now read everything: the newest version of each key arrives, in order, once
        from contract.versions import lsn_of_text, version_of_lsn

        final: dict[str, str] = {}
        seen: list[tuple[str, str]] = []
        ceilings = {f"card:{c}": version_of_lsn(lsn_of_text(after)) for c, (_, after) in last.items()}

        def caught_up() -> bool:
            return all("" < final.get(k, "") <= f for k, f in ceilings.items())

        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            try:
                msg = json.loads(await asyncio.wait_for(slow.recv(), 2))
            except TimeoutError:
                break
            if msg["type"] == "invalidate":
                seen.extend(msg["keys"].items())
                final.update(msg["keys"])
        assert_in_order_once(seen)
        async with Client(ws_url(s, s.gateway_port), token=token(["card:*"])) as check:
            current = await check.subscribe(keys)
        assert final == {k: v for k, v in current.items() if v is not None}
        assert caught_up()

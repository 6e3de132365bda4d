"""The cluster topology (#12) under faults: `FRESHWIRE_TOPOLOGY=cluster` starts 3 KRaft brokers, 2
Connect workers, a 3+3 Redis Cluster, 2 cdc consumers, 3 gateways behind HAProxy (and a streaming
replica the consumers release through); then bench/cluster_faults.py SIGKILLs the broker leading the
input topic, the Connect worker running the task, the Redis master of the control slot, the active
consumer and the busiest gateway, one at a time, with a writer and clients spread over the gateways
running. Zero violations, and every tier recovers (the recovery times are printed and written)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from clients.python.client import Client
from connectors.stack_settings import REPO, cluster_settings

START_TIMEOUT_S = 420
RUN_TIMEOUT_S = 480


def test_every_tier_survives_losing_a_member_with_nothing_lost(tmp_path: Path) -> None:
    env = {**os.environ, "FRESHWIRE_TOPOLOGY": "cluster", "FRESHWIRE_STATE_DIR": str(tmp_path / "state"),
           "FRESHWIRE_REPLICA": "1", "FRESHWIRE_REPLICA_DELAY_MS": "1000", "FRESHWIRE_RELEASE_GATING": "1"}
    try:
        up = subprocess.run([sys.executable, "-m", "connectors.stack", "up", "--detach"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        asyncio.run(_demo_board_works_through_haproxy())
        out = subprocess.run([sys.executable, "-m", "bench.cluster_faults", "--results", str(tmp_path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        print(out.stdout)
        summary = json.loads((tmp_path / "cluster_faults.json").read_text())
        assert summary["violations"] == [], out.stdout[-3000:] + out.stderr[-3000:]
        assert out.returncode == 0
        assert set(summary["recoveries"]) == {"broker", "connect", "redis", "cdc", "gateway"}
        assert summary["invalidations_checked"] > 0 and summary["replica_rereads"] > 0
    finally:
        subprocess.run([sys.executable, "-m", "connectors.stack", "down"], cwd=REPO, env=env, capture_output=True,
                       timeout=300)


def _http(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        found: dict[str, object] = json.load(response)
        return found


async def _demo_board_works_through_haproxy() -> None:
    """The demo's session sends browsers to HAProxy; a card added through the demo reaches a client
    subscribed there to the board, as the board page's client is."""
    lay = cluster_settings().cluster
    demo = f"http://{lay.host}:{lay.demo_port}"
    session = await asyncio.to_thread(_http, f"{demo}/api/session?user=cluster-test")
    assert session["gateway"] == lay.haproxy_ws_url
    client = Client(str(session["gateway"]), token=str(session["token"]))
    await client.start()
    try:
        key = "tenant:1:board:1"
        await client.subscribe([key])
        before = client.versions.get(key)
        await asyncio.to_thread(_http, f"{demo}/api/boards/1/cards", {"title": "through HAProxy"})
        deadline = time.monotonic() + 20
        while client.versions.get(key) == before:
            assert time.monotonic() < deadline, "the board's invalidation never came through HAProxy"
            await asyncio.sleep(0.05)
    finally:
        await client.close()

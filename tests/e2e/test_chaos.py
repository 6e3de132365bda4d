"""The chaos harness, small: every kind of fault against a private stack, zero violations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from connectors.stack_settings import REPO

PORT_OFFSET = 271  # a private stack: the harness kills its parts


def test_chaos_small_run_with_every_fault_kind_has_no_violation(tmp_path: Path) -> None:
    bases = {"PG": 15432, "REDIS": 16379, "KAFKA": 19092, "KAFKA_CONTROLLER": 19093, "CONNECT": 18083,
             "GATEWAY": 18080, "GATEWAY2": 18081, "CDC_METRICS": 19108, "DEMO": 18090, "REPLICA": 15433}
    env = {**os.environ, "FRESHWIRE_STATE_DIR": str(tmp_path / "state"), "FRESHWIRE_REPLICA": "0",
           **{f"FRESHWIRE_{name}_PORT": str(port + PORT_OFFSET) for name, port in bases.items()}}
    seed = 11
    try:
        out = subprocess.run([sys.executable, "-m", "bench.chaos", "--size", "400", "--seed", str(seed),
                              "--faults", "7", "--timeout", "90", "--results", str(tmp_path)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        summary = json.loads((tmp_path / f"chaos-{seed}.json").read_text())
        assert summary["violations"] == []
        assert summary["transactions"] == 400
        assert set(summary["faults"]) == {"kill cdc", "kill gateway", "kill connect", "kill kafka", "kill redis",
                                          "pause cdc", "pause gateway"}
        assert summary["invalidations_checked"] > 0
        assert summary["bulk_transactions"] >= 2 and summary["big_values"] >= 2  # big transactions and rows too
    finally:
        subprocess.run([sys.executable, "-m", "connectors.stack", "down"], cwd=REPO, env=env, capture_output=True)
        subprocess.run([sys.executable, "-m", "connectors.stack", "clean"], cwd=REPO, env=env, capture_output=True)

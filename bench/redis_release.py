"""Releases per second one Redis shard takes: the real release script (cdc/redis_layout.py) through
the real RedisRelease, against a Redis of this benchmark's own (no stack needed).

    .venv/bin/python -m bench.redis_release [--seconds 10] [--keys 1,10,100] [--pipeline 50]

For each number of keys per transaction it calls RedisRelease.release with batches of `--pipeline`
transactions (as the consumer does with a chunk), for `--seconds`, and reports transactions/s and
keys/s, with AOF everysec (the stack's default). A capacity figure for docs/scaling.md. Loopback
only; bounded by --seconds per arm.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.redis_procs import free_ports, start_server, stop_server
from bench.report import machine_info, write_json
from cdc.effects import RedisRelease
from cdc.model import Batch


def arm(url: str, keys_per_tx: int, seconds: float, pipeline: int, start: int) -> tuple[dict[str, Any], int]:
    release = RedisRelease(url)
    n, t0 = start, time.monotonic()
    txs = 0
    while time.monotonic() - t0 < seconds:
        batches = []
        for _ in range(pipeline):
            n += 1
            batches.append(Batch(version=f"{n:016x}", tx_id=str(n), commit_ts_ms=int(time.time() * 1000),
                                 keys=tuple(f"card:{(n * keys_per_tx + i) % 100_000}" for i in range(keys_per_tx))))
        release.release(batches)
        txs += pipeline
    elapsed = time.monotonic() - t0
    release.close()
    return {"keys_per_tx": keys_per_tx, "tx_per_s": round(txs / elapsed), "keys_per_s": round(txs * keys_per_tx
                                                                                                / elapsed)}, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--keys", default="1,10,100")
    parser.add_argument("--pipeline", type=int, default=50)
    args = parser.parse_args()
    port = free_ports(1)[0]
    with tempfile.TemporaryDirectory() as workdir:
        # AOF as the stack runs it (the later option wins over start_server's defaults)
        proc = start_server(port, Path(workdir), "--appendonly", "yes", "--appendfsync", "everysec")
        try:
            results, n = [], 0
            for keys in (int(k) for k in args.keys.split(",")):
                result, n = arm(f"redis://127.0.0.1:{port}/0", keys, args.seconds, args.pipeline, n)
                results.append(result)
                print(f"  {keys:>4} keys/tx: {result['tx_per_s']:>8} tx/s  {result['keys_per_s']:>9} keys/s",
                      flush=True)
        finally:
            stop_server(proc)
    write_json("redis_release", {"machine": machine_info(), "seconds": args.seconds, "pipeline": args.pipeline,
                                 "arms": results})


if __name__ == "__main__":
    main()

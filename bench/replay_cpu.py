"""The consumer's per-record CPU cost, in process: no Kafka, no Redis, no stack.

    .venv/bin/python -m bench.replay_cpu [--seconds 5] [--mode replay|live|both]

Drives the real loop body (cdc.consumer.Pipeline._process: decode -> assemble -> rules, then the
chunk's metrics, report and commit) with real confluent_kafka Message objects, chunks of
cdc_max_records, and in-process fakes of the consumer, Redis and the outputs. The records are
bench/throughput.py's workload rebuilt from real Debezium output (tests/fixtures/stack-capture.jsonl):
transactions of --rows-per-tx card updates (REPLICA IDENTITY FULL, `version` bumped) between their
BEGIN and END markers, with a Debezium heartbeat and a freshwire_heartbeat transaction every
--heartbeat-every transactions, under demo/rules.toml.

`replay` mirrors bench/throughput.py --replay-only: a new group reading a topic whose versions Redis
already holds, so the partition is assigned with a plan that skips through Redis' watermark and every
transaction is skipped as already released. `live` releases every transaction (to fakes).

Prints records/s per mode, by the wall clock and per CPU second of this process (the machine is
shared: the CPU figure moves less with the neighbours' load), the best of --repeats timed passes, each
bounded by --seconds; writes
bench/results/replay_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Message, TopicPartition

from bench.report import machine_info, write_json
from cdc.consumer import Pipeline
from cdc.errors import DecodeError
from cdc.metrics import Metrics
from cdc.model import Batch
from cdc.rules import load_rules
from cdc.settings import Settings
from contract.versions import version_of_lsn

REPO = Path(__file__).resolve().parents[1]
CAPTURE = REPO / "tests" / "fixtures" / "stack-capture.jsonl"
RULES_FILE = REPO / "demo" / "rules.toml"
TOPIC = Settings().cdc_topic
CARDS = 200
FIRST_LSN = 30_000_000
LSN_STEP = 272  # between two changes of a transaction, as in the capture
NO_OFFSET = -1001


def _captured() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CAPTURE.read_text().splitlines() if line.strip()]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Templates:
    """One real record of each kind the throughput workload produces, parsed, to be re-filled."""

    def __init__(self, rows: Sequence[dict[str, Any]]) -> None:
        def first(pred: Any) -> dict[str, Any]:
            return next(r for r in rows if r["value"] is not None and pred(json.loads(r["value"])))

        self.heartbeat = first(lambda b: set(b) == {"ts_ms"})
        self.begin = json.loads(first(lambda b: b.get("status") == "BEGIN")["value"])
        self.end = json.loads(first(lambda b: b.get("status") == "END")["value"])
        self.card = json.loads(first(lambda b: b.get("op") == "u" and b["source"]["table"] == "cards")["value"])
        self.beat = json.loads(first(lambda b: b.get("op") == "u" and b["source"]["table"] == "freshwire_heartbeat")
                               ["value"])


def _change(template: dict[str, Any], tx: str, lsn: int, total_order: int, ts_ms: int,
            before: dict[str, Any], after: dict[str, Any]) -> bytes:
    body = json.loads(json.dumps(template))
    body["before"], body["after"] = before, after
    source = body["source"]
    source["lsn"], source["txId"], source["ts_ms"] = lsn, int(tx), ts_ms
    source["ts_us"], source["ts_ns"] = ts_ms * 1000, ts_ms * 1_000_000
    source["sequence"] = json.dumps([str(lsn - LSN_STEP), str(lsn)])
    body["transaction"] = {"id": f"{tx}:{lsn}", "total_order": total_order, "data_collection_order": total_order}
    body["ts_ms"] = ts_ms + 20
    return _dumps(body)


def _marker(template: dict[str, Any], tx: str, lsn: int, ts_ms: int, counts: dict[str, int] | None) -> bytes:
    body = dict(template)
    body["id"], body["ts_ms"] = f"{tx}:{lsn}", ts_ms
    if counts is None:
        body["event_count"], body["data_collections"] = None, None
    else:
        body["event_count"] = sum(counts.values())
        body["data_collections"] = [{"data_collection": t, "event_count": n} for t, n in counts.items()]
    return _dumps(body)


def workload(transactions: int, rows_per_tx: int, heartbeat_every: int) -> tuple[list[Message], str]:
    """The records and the version of the last END (Redis' watermark after a live run)."""
    t = Templates(_captured())
    card_before = dict(t.card["before"])
    versions = {i: 1 for i in range(1, CARDS + 1)}
    msgs: list[Message] = []
    lsn, xid, ts_ms = FIRST_LSN, 1000, 1_795_802_848_000
    last_version = ""

    def add(key: bytes | None, value: bytes | None) -> None:
        msgs.append(Message(topic=TOPIC, partition=0, offset=len(msgs), key=key, value=value,
                            timestamp=(1, ts_ms)))

    def transaction(table: str, rows: list[tuple[bytes, bytes]]) -> None:
        nonlocal lsn, xid, last_version
        xid += 1
        tx = str(xid)
        add(_dumps({"id": f"{tx}:{lsn}"}), _marker(t.begin, tx, lsn, ts_ms, None))
        for key, value in rows:
            add(key, value)
        lsn += LSN_STEP
        add(_dumps({"id": f"{tx}:{lsn}"}), _marker(t.end, tx, lsn, ts_ms, {table: len(rows)}))
        last_version = version_of_lsn(lsn)
        lsn += 56

    for n in range(transactions):
        ts_ms += 1
        if heartbeat_every and n % heartbeat_every == 0:
            add(t.heartbeat["key"].encode(), _dumps({"ts_ms": ts_ms}))
            beat = dict(t.beat["after"])
            value = _change(t.beat, str(xid + 1), lsn, 1, ts_ms, t.beat["before"], beat)
            transaction("public.freshwire_heartbeat", [(_dumps({"id": 1}), value)])
        rows = []
        for i in range(rows_per_tx):
            card = (n * rows_per_tx + i) * 7919 % CARDS + 1
            before = {**card_before, "id": card, "version": versions[card]}
            versions[card] += 1
            after = {**before, "version": versions[card]}
            rows.append((_dumps({"id": card}), _change(t.card, str(xid + 1), lsn + i * LSN_STEP, i + 1, ts_ms,
                                                       before, after)))
        lsn += (rows_per_tx - 1) * LSN_STEP
        transaction("public.cards", rows)
    return msgs, last_version


class _Consumer:
    def __init__(self) -> None:
        self.commits = 0

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits += 1

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(TOPIC, p.partition, NO_OFFSET) for p in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        pass


class _Redis:
    def __init__(self, watermark: str) -> None:
        self._watermark = watermark
        self.batches = 0

    def release(self, batches: Sequence[Batch]) -> int:
        self.batches += len(batches)
        return 0

    def watermark(self) -> str | None:
        return self._watermark or None

    def close(self) -> None:
        pass


class _Outputs:
    def __init__(self, ops_version: str) -> None:
        self.ops_version = ops_version
        self.refused: list[tuple[str, str]] = []

    def append_ops(self, batches: Sequence[Batch]) -> None:
        pass

    def flush(self, timeout_s: float = 10.0) -> None:
        pass

    def dead_letter(self, msg: Message, error: DecodeError) -> None:
        raise AssertionError(f"the workload dead-lettered a record: {error}")

    def note(self, code: str, message: str, key: bytes | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def one_pass(msgs: list[Message], watermark: str, chunk: int, seconds: float) -> tuple[int, float, float, int]:
    """(records, wall seconds, CPU seconds, batches released) of one pass over `msgs` by a freshly
    assigned pipeline."""
    settings = Settings(rules=str(RULES_FILE))
    consumer, redis = _Consumer(), _Redis(watermark)
    pipeline = Pipeline(settings, load_rules(RULES_FILE), Metrics(), threading.Event(), consumer=consumer,  # type: ignore[arg-type]
                        redis=redis, outputs=_Outputs(watermark))  # type: ignore[arg-type]
    pipeline._on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    records = 0
    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + seconds
    for i in range(0, len(msgs), chunk):
        part = msgs[i:i + chunk]
        pipeline._process(part, time.time() * 1000)
        records += len(part)
        if time.perf_counter() > deadline:
            break
    return records, time.perf_counter() - start, time.process_time() - cpu, redis.batches


def measure(msgs: list[Message], watermark: str, chunk: int, seconds: float, repeats: int) -> dict[str, Any]:
    one_pass(msgs[:chunk * 2], watermark, chunk, seconds)  # warm-up: imports, caches
    runs = []
    for _ in range(repeats):
        records, took, cpu, batches = one_pass(msgs, watermark, chunk, seconds)
        runs.append({"records": records, "seconds": round(took, 3), "cpu_s": round(cpu, 3),
                     "records_per_s": round(records / took, 1), "records_per_cpu_s": round(records / cpu, 1),
                     "batches_released": batches})
    return {"records_per_s": max(r["records_per_s"] for r in runs),
            "records_per_cpu_s": max(r["records_per_cpu_s"] for r in runs), "runs": runs}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="bound of one timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode (the best is reported)")
    parser.add_argument("--mode", choices=("replay", "live", "both"), default="both")
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--rows-per-tx", type=int, default=10)
    parser.add_argument("--heartbeat-every", type=int, default=200,
                        help="transactions between two heartbeats (~1 s at 2,000 events/s)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    msgs, last_version = workload(args.transactions, args.rows_per_tx, args.heartbeat_every)
    chunk = Settings().cdc_max_records
    results: dict[str, Any] = {}
    for mode in ("replay", "live") if args.mode == "both" else (args.mode,):
        results[mode] = measure(msgs, last_version if mode == "replay" else "", chunk, args.seconds, args.repeats)
        res = results[mode]
        runs = ", ".join(f"{r['records_per_s']:,.0f}" for r in res["runs"])
        print(f"{mode}: {res['records_per_s']:,.0f} records/s, {res['records_per_cpu_s']:,.0f} per CPU second "
              f"(wall runs: {runs}; {len(msgs):,} records, {args.rows_per_tx} rows per transaction)", flush=True)
    if not args.no_write:
        write_json("replay_cpu", {"machine": machine_info(), "settings": vars(args), "records": len(msgs),
                                  "chunk": chunk, **results})


if __name__ == "__main__":
    main()

"""Big transactions, measured (issue #17): commit -> client for one INSERT and one UPDATE of N rows,
the consumer's RSS growth while it carries them, and what capturing only the rule columns saves.

    .venv/bin/python -m bench.bigtx [--rows 50000,1000000] [--capture-rows 10000]

Needs the native stack (it starts what is missing). Each arm commits into `cards` of a tenant of its
own, subscribes one real client to a key of the first and of the last row, and times each commit
until that client holds both at the commit's version; meanwhile it samples the cdc process's RSS
every 100 ms. The capture arm re-registers the connector without and then with the rules' include
lists and compares the Kafka bytes and the walsender's CPU for one N-row UPDATE. Prints a table and
writes bench/results/bigtx.json. Loopback only; bounded by the row counts and a 300 s wait per step.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from bench.procfs import cpu_seconds, rss_kb
from bench.report import machine_info, write_json
from cdc.rules import load_rules
from clients.python.client import Client
from connectors import procs, register, services, stack
from connectors.stack_settings import StackSettings, load_stack_settings
from contract import topics
from tests.e2e.helpers import client, new_board, next_id, subscribe_settled, until, write

STEP_TIMEOUT_S = 300.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak_kb = pid, threading.Event(), 0
        self.start_kb = rss_kb(pid)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))


def _at(c: Client, keys: list[str], low: str, high: str) -> Callable[[], bool]:
    return lambda: all(low < (c.versions.get(k) or "") <= high for k in keys)


async def one_arm(s: StackSettings, rows: int) -> dict[str, Any]:
    tenant = 2000 + next_id(s, "boards")
    board = new_board(s, tenant)
    first = next_id(s, "cards")
    write(s, "SELECT setval('cards_id_seq', %s)", (first + rows,))
    keys = [f"tenant:{tenant}:card:{first}", f"tenant:{tenant}:card:{first + rows - 1}"]
    cdc_pid = procs.recorded_pid(s.pids_dir, "cdc")
    assert cdc_pid is not None, "the cdc consumer is not running"
    result: dict[str, Any] = {"rows": rows}
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, keys)
        steps = {"insert": ("INSERT INTO cards (id, tenant_id, board_id, title) "
                            "SELECT g, %s, %s, 'bulk' FROM generate_series(%s, %s) g",
                            (tenant, board, first, first + rows - 1)),
                 "update": ("UPDATE cards SET version = version + 1 WHERE board_id = %s", (board,)),
                 "delete": ("DELETE FROM cards WHERE board_id = %s", (board,))}
        for name, (sql, params) in steps.items():
            sampler = RssSampler(cdc_pid)
            sampler.start()
            t0 = time.monotonic()
            _tx, inside, after = write(s, sql, params)
            committed = time.monotonic()
            await until(_at(c, keys, inside, after), STEP_TIMEOUT_S, what=f"{name} of {rows} rows")
            sampler.stop.set()
            sampler.join()
            result[name] = {"commit_s": round(committed - t0, 2), "commit_to_client_s": round(time.monotonic()
                                                                                              - committed, 2),
                            "cdc_rss_start_mb": round(sampler.start_kb / 1024, 1),
                            "cdc_rss_growth_mb": round(max(0, sampler.peak_kb - sampler.start_kb) / 1024, 1)}
            print(f"  {rows:>9} rows {name:<6} commit {result[name]['commit_s']:6.2f}s  commit->client "
                  f"{result[name]['commit_to_client_s']:6.2f}s  cdc RSS +{result[name]['cdc_rss_growth_mb']} MB",
                  flush=True)
    return result


def _topic_end(s: StackSettings) -> int:
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "bench-bigtx"})
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topics.CHANGES, 0), timeout=10)[1])
    finally:
        consumer.close()


def _bytes_between(s: StackSettings, start: int, end: int) -> tuple[int, int]:
    """(records, value bytes) of freshwire.cdc in [start, end)."""
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "bench-bigtx",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.CHANGES, 0, start)])
    records = size = 0
    try:
        while records < end - start:
            batch = consumer.consume(10_000, 5.0)
            if not batch:
                break
            for msg in batch:
                if msg.error() is None and (msg.offset() or 0) < end:
                    records += 1
                    size += len(msg.value() or b"")
    finally:
        consumer.close()
    return records, size


def _walsender_pid(s: StackSettings) -> int:
    with psycopg.connect(s.pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'freshwire'").fetchone()
    assert row is not None and row[0] is not None, "Debezium's slot is not active"
    return int(row[0])


async def capture_arm(s: StackSettings, rows: int) -> dict[str, Any]:
    """One N-row UPDATE with every column captured, then with only the rules' columns."""
    tenant = 3000 + next_id(s, "boards")
    board = new_board(s, tenant)
    first = next_id(s, "cards")
    write(s, "SELECT setval('cards_id_seq', %s)", (first + rows,))
    write(s, "INSERT INTO cards (id, tenant_id, board_id, title, owner) "
             "SELECT g, %s, %s, repeat('t', 200), 'someone' FROM generate_series(%s, %s) g",
          (tenant, board, first, first + rows - 1))
    rules = load_rules(services.RULES_FILE)
    out: dict[str, Any] = {"rows": rows}
    key = f"tenant:{tenant}:card:{first + rows - 1}"
    async with client(s, ["*"]) as c:
        await subscribe_settled(c, [key])
        for arm, arm_rules in (("all_columns", None), ("rule_columns", rules)):
            register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, rules=arm_rules)
            await asyncio.sleep(2)
            walsender = _walsender_pid(s)
            start, cpu0 = _topic_end(s), cpu_seconds(walsender)
            _tx, inside, after = write(s, "UPDATE cards SET version = version + 1 WHERE board_id = %s", (board,))
            await until(_at(c, [key], inside, after), STEP_TIMEOUT_S, what=arm)
            cpu = cpu_seconds(walsender) - cpu0
            records, size = _bytes_between(s, start, _topic_end(s))
            out[arm] = {"records": records, "kafka_value_bytes": size, "bytes_per_record": size // max(records, 1),
                        "walsender_cpu_s": round(cpu, 2)}
            print(f"  capture {arm:<12} {records} records, {size / 1e6:7.1f} MB in Kafka "
                  f"({size // max(records, 1)} B/record), walsender {cpu:.2f} CPU-s", flush=True)
    write(s, "DELETE FROM cards WHERE board_id = %s", (board,))
    register.register(s.connect_url, s.host, s.pg_port, pg_dsn=s.pg_dsn, rules=rules)
    return out


async def main_async(args: argparse.Namespace) -> None:
    s = load_stack_settings()
    started = stack.up(s, with_apps=True, quiet=True)
    try:
        results: dict[str, Any] = {"machine": machine_info(), "arms": []}
        for rows in (int(r) for r in args.rows.split(",")):
            results["arms"].append(await one_arm(s, rows))
        results["capture"] = await capture_arm(s, args.capture_rows)
        write_json("bigtx", results)
    finally:
        stack.down(s, only=started, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50000,1000000")
    parser.add_argument("--capture-rows", type=int, default=10_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The consumer's Prometheus metrics and its tiny HTTP endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# 10 ms steps up to 0.5 s: replica apply delays of a few hundred ms are read to a percentile.
HOLD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, *(i / 100 for i in range(1, 51)), 0.75, 1, 2, 5, 10, 30)
LAG_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter("freshwire_cdc_records_total", "Kafka records consumed", registry=r)
        self.batches_out = Counter("freshwire_cdc_batches_total", "transaction batches released", registry=r)
        self.keys_out = Counter("freshwire_cdc_keys_total", "key invalidations released", registry=r)
        self.replays = Counter("freshwire_cdc_replayed_batches_total", "batches skipped as already released",
                               registry=r)
        self.dlq = Counter("freshwire_cdc_dlq_total", "records sent to the dead-letter topic", ["code"], registry=r)
        self.retries = Counter("freshwire_cdc_effect_retries_total", "retried Redis or Kafka effects", ["effect"],
                               registry=r)
        self.commit_to_publish = Histogram(
            "freshwire_cdc_commit_to_publish_seconds", "database commit to Redis publish", buckets=LAG_BUCKETS,
            registry=r)
        self.consumer_lag = Gauge("freshwire_cdc_consumer_lag_records", "records behind the input topic's end",
                                  registry=r)
        self.assigned = Gauge("freshwire_cdc_assigned_partitions",
                              "input partitions this consumer holds (0: a hot spare in the group)", registry=r)
        self.last_version = Gauge("freshwire_cdc_last_version_lsn", "LSN of the last released version", registry=r)
        self.hold = Histogram("freshwire_cdc_hold_seconds", "time a batch waited for the replicas",
                              buckets=HOLD_BUCKETS, registry=r)
        self.released_stale = Counter("freshwire_cdc_released_stale_total",
                                      "batches released past max_hold before every replica had them", registry=r)
        self.replica_lag = Gauge("freshwire_cdc_replica_lag_seconds", "now - last replayed commit, per replica",
                                 ["replica"], registry=r)
        self.replica_replayed = Gauge("freshwire_cdc_replica_replayed_lsn", "replay position, per replica",
                                      ["replica"], registry=r)
        self.ready = Gauge("freshwire_cdc_ready", "1 when effects are succeeding and the slot is not lost",
                           registry=r)
        self.slot_active = Gauge("freshwire_slot_active", "1 while Debezium streams from its slot", registry=r)
        self.slot_retained = Gauge("freshwire_slot_retained_wal_bytes", "WAL the slot keeps on the primary",
                                   registry=r)
        self.slot_lag = Gauge("freshwire_slot_confirmed_lag_bytes", "WAL written but not yet confirmed by Debezium",
                              registry=r)
        self.slot_safe = Gauge("freshwire_slot_safe_wal_bytes",
                               "WAL that can still be written before the slot is lost (max_slot_wal_keep_size)",
                               registry=r)
        self.slot_lost = Gauge("freshwire_slot_lost", "1 once PostgreSQL removed WAL the slot needed", registry=r)
        self.retention_overruns = Counter(
            "freshwire_cdc_retention_overruns_total",
            "restarts that found the input topic's retention past the committed offset (every key flushed)",
            registry=r)
        self.version_store_keys = Gauge("freshwire_version_store_keys", "keys holding a version in Redis",
                                        registry=r)
        self.version_horizon = Gauge("freshwire_version_horizon_lsn",
                                     "the retention horizon: newest version trimmed from the store", registry=r)
        self.versions_trimmed = Counter("freshwire_versions_trimmed_total",
                                        "versions dropped past the retention horizon", registry=r)
        self.store_resets = Counter(
            "freshwire_cdc_store_resets_total",
            "assignments that found Redis emptied behind a committed offset (every key flushed)", registry=r)
        self.degraded = Counter("freshwire_cdc_degraded_batches_total",
                                "transactions too large to carry key by key, released as prefixes", registry=r)
        self.payload_dropped = Counter(
            "freshwire_cdc_payload_dropped_total",
            "row keys of payload rules released without data, by reason (docs/cdc.md, Payload)", ["reason"],
            registry=r)
        self.payload_keys = Counter("freshwire_cdc_payload_keys_total", "keys released with a payload", registry=r)
        self.missing_events = Counter(
            "freshwire_cdc_missing_events_total",
            "events a transaction's END counted that never reached the consumer (table invalidated whole)",
            ["table"], registry=r)
        self.effect_refusals = Counter(
            "freshwire_cdc_effect_refusals_total",
            "outputs refused for good (Kafka: noted in the DLQ; Redis: released as whole tables)", ["effect"],
            registry=r)
        self.connector_restarts = Counter("freshwire_connector_task_restarts_total",
                                          "failed Debezium tasks restarted through Connect's REST API", registry=r)
        self.connector_running = Gauge("freshwire_connector_running",
                                       "1 while the connector and every task run (when Connect is watched)",
                                       registry=r)
        self.effects_ok = True
        self.connector_ok = True  # stays True when FRESHWIRE_CONNECT_URL is not set
        self.config_error: str | None = None  # a configuration Freshwire refuses (not ready until fixed)
        self.detail: dict[str, object] = {}

    def set_effects_ok(self, ok: bool) -> None:
        self.effects_ok = ok
        self.ready.set(1 if self.readiness()[0] else 0)

    def set_config_error(self, error: str) -> None:
        self.config_error = error
        self.detail["config_error"] = error
        self.set_effects_ok(self.effects_ok)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        slot = self.detail.get("slot_state")
        lost = isinstance(slot, dict) and slot.get("wal_status") == "lost"
        ok = self.effects_ok and not lost and self.connector_ok and self.config_error is None
        return ok, {"status": "ready" if ok else "not ready", "effects": "ok" if self.effects_ok else "retrying",
                    **self.detail}


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body, status, ctype = generate_latest(self.metrics.registry), 200, CONTENT_TYPE_LATEST
        elif self.path == "/healthz":
            body, status, ctype = b"ok\n", 200, "text/plain"
        elif self.path == "/readyz":
            ok, detail = self.metrics.readiness()
            body, status, ctype = json.dumps(detail).encode(), 200 if ok else 503, "application/json"
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"metrics": metrics})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server

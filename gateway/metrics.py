"""The gateway's Prometheus metrics (one registry per app instance).

Connection, subscription, delivery, coalescing and queue figures are read from the hub at scrape
time, so there is one source of truth and nothing to keep in step on the fan-out path.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.awaits import Awaits
from gateway.hub import Hub

LAG_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def staleness_buckets(lags: Iterable[float], bounds: tuple[float, ...] = LAG_BUCKETS) -> tuple[list[int], float]:
    """Cumulative counts per upper bound (the last one +Inf) and the sum: a histogram over connections."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for lag in lags:
        counts[bisect.bisect_left(bounds, lag)] += 1
        total += lag
    running, cumulative = 0, []
    for n in counts:
        running += n
        cumulative.append(running)
    return cumulative, total


def running_tasks() -> int:
    """asyncio tasks of the running loop (0 when called outside one): a leak of per-connection or
    per-await tasks shows here (bench/soak.py watches it return to its baseline)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0


class _HubCollector(Collector):
    def __init__(self, hub: Hub, awaits: Awaits | None) -> None:
        self.hub = hub
        self.awaits = awaits

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield GaugeMetricFamily("freshwire_gateway_connections", "open WebSocket connections",
                                value=len(hub.sessions))
        yield GaugeMetricFamily("freshwire_gateway_subscriptions", "(connection, key) subscriptions",
                                value=hub.subscriptions)
        yield GaugeMetricFamily("freshwire_gateway_queue_depth", "frames waiting in all connection queues",
                                value=sum(s.depth for s in hub.sessions))
        yield GaugeMetricFamily("freshwire_gateway_subscribed_keys", "keys with at least one subscriber (hub entries)",
                                value=len(hub.index))
        if self.awaits is not None:
            yield GaugeMetricFamily("freshwire_gateway_awaits_pending",
                                    "awaits (WebSocket and /v1/wait) not yet answered", value=self.awaits.pending)
            yield GaugeMetricFamily("freshwire_gateway_await_tokens", "distinct write tokens being awaited",
                                    value=self.awaits.tokens)
        yield GaugeMetricFamily("freshwire_gateway_tasks", "asyncio tasks in the gateway's event loop",
                                value=running_tasks())
        yield CounterMetricFamily("freshwire_gateway_deliveries", "(connection, key) invalidations queued",
                                  value=hub.deliveries)
        yield CounterMetricFamily("freshwire_gateway_coalesced",
                                  "pending invalidations replaced by a newer version before being sent",
                                  value=hub.coalesced)
        # How far each connection trails what was released: the age of its oldest unsent change (0 for a
        # connection with nothing pending), read at scrape time.
        now_ms = time.time() * 1000
        lags = [max(0.0, now_ms - s.oldest_commit_ms) / 1000 if s.pending and s.oldest_commit_ms else 0.0
                for s in hub.sessions]
        cumulative, total = staleness_buckets(lags)
        bounds = [*(str(b) for b in LAG_BUCKETS), "+Inf"]
        yield HistogramMetricFamily("freshwire_gateway_connection_staleness_seconds",
                                    "per connection: age of its oldest change not yet sent (over connections)",
                                    buckets=list(zip(bounds, cumulative, strict=True)), sum_value=total)
        yield GaugeMetricFamily("freshwire_gateway_connection_staleness_worst_seconds",
                                "the most stale connection's oldest unsent change", value=max(lags, default=0.0))


class GatewayMetrics:
    def __init__(self, hub: Hub, awaits: Awaits | None = None) -> None:
        self.registry = r = CollectorRegistry()
        r.register(_HubCollector(hub, awaits))
        self.errors = Counter("freshwire_gateway_errors_total", "errors sent to clients, by code", ["code"],
                              registry=r)
        self.closes = Counter("freshwire_gateway_closes_total", "connections closed by the server, by code",
                              ["code"], registry=r)
        self.commit_to_send = Histogram("freshwire_gateway_commit_to_send_seconds",
                                        "database commit to the invalidate frame being written",
                                        buckets=LAG_BUCKETS, registry=r)
        self.lapses = Counter("freshwire_gateway_lapses_total",
                              "guarantee lapses told to clients (replica_lag, flush, resync)", ["reason"], registry=r)
        self.task_failures = Counter("freshwire_gateway_task_failures_total",
                                     "connection tasks (writer, await) that died of an error: closed with 1011",
                                     ["task"], registry=r)
        self.resyncs = Counter("freshwire_gateway_resyncs_total", "re-reads of all versions after a backend break",
                               registry=r)

"""The gateway's Prometheus metrics (one registry per app instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Gauge("freshwire_gateway_connections", "open WebSocket connections", registry=r)
        self.subscriptions = Gauge("freshwire_gateway_subscriptions", "(connection, key) subscriptions",
                                   registry=r)
        self.deliveries = Counter("freshwire_gateway_deliveries_total", "(connection, key) invalidations queued",
                                  registry=r)
        self.coalesced = Counter("freshwire_gateway_coalesced_total",
                                 "pending invalidations replaced by a newer version before being sent", registry=r)
        self.queue_depth = Gauge("freshwire_gateway_queue_depth", "frames waiting in all connection queues",
                                 registry=r)
        self.errors = Counter("freshwire_gateway_errors_total", "errors sent to clients, by code", ["code"],
                              registry=r)
        self.closes = Counter("freshwire_gateway_closes_total", "connections closed by the server, by code",
                              ["code"], registry=r)
        self.commit_to_send = Histogram("freshwire_gateway_commit_to_send_seconds",
                                        "database commit to the invalidate frame being written",
                                        buckets=LAG_BUCKETS, registry=r)
        self.resyncs = Counter("freshwire_gateway_resyncs_total", "re-reads of all versions after a backend break",
                               registry=r)

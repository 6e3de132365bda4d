"""A Kafka Connect worker's properties, shared by the single stack (one worker) and the cluster's
workers: pure, a dict in the order Connect's docs list them."""

from __future__ import annotations

from pathlib import Path

CONNECT_GROUP = "freshwire-connect"

Props = dict[str, str | int]


def worker_props(bootstrap: str, host: str, port: int, plugins_dir: Path, replication_factor: int) -> Props:
    """A distributed-mode worker of the one Connect group, its internal topics at `replication_factor`."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": CONNECT_GROUP,
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        "config.storage.topic": "freshwire-connect-configs",
        "offset.storage.topic": "freshwire-connect-offsets",
        "status.storage.topic": "freshwire-connect-status",
        "config.storage.replication.factor": replication_factor,
        "offset.storage.replication.factor": replication_factor,
        "offset.storage.partitions": 1,
        "status.storage.replication.factor": replication_factor,
        "status.storage.partitions": 1,
        "offset.flush.interval.ms": 1000,
        # fetch.max.wait.ms stays Kafka's 500 for the worker's own consumers of its config/offset/
        # status topics (they inherit top-level settings). Debezium reads its offsets back through the
        # offset topic's consumer after every flush, on the task thread, and now and then that read
        # waits out the consumer's idle long poll instead of being woken: the connector sends nothing
        # meanwhile. 5000 here gave ~1 s stalls (ended by the next flush), 500 gives <= ~0.5 s, 100
        # costs ~4 % of a core at rest (docs/benchmarks.md, docs/tuning.md).
        "listeners": f"http://{host}:{port}",
        "rest.advertised.host.name": host,
        "rest.advertised.port": port,
        "plugin.path": str(plugins_dir),
        # Plugins are found through their ServiceLoader manifests (Debezium's jar and Kafka's own carry
        # them), not by reflection over every class of plugin.path and the classpath: a worker starts
        # ~20 s faster on 2 idle cores and ~55 s faster on loaded ones, where a replacement worker
        # joins the group (docs/tuning.md).
        "plugin.discovery": "service_load",
        # A dead worker's tasks move at the next rebalance, not after a 5-minute grace period.
        "scheduled.rebalance.max.delay.ms": 0,
        "connector.client.config.override.policy": "All",
    }

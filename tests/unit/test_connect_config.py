"""The Connect worker's properties (connectors/connect_config.py), as far as they bound a stall or a
worker's start."""

from __future__ import annotations

from pathlib import Path

from connectors.connect_config import worker_props

KAFKA_DEFAULT_FETCH_MAX_WAIT_MS = 500


def test_internal_consumers_long_poll_no_longer_than_kafkas_default() -> None:
    # Debezium reads its offsets back after every flush on the task thread, and that read can wait out
    # the offset topic consumer's long poll (a lost wake-up; docs/benchmarks.md, "The ~1 s stall,
    # found"): the worker-level fetch.max.wait.ms is how long the whole connector may stand still.
    for replication_factor in (1, 3):
        props = worker_props("127.0.0.1:9092", "127.0.0.1", 8083, Path("/plugins"), replication_factor)
        assert int(props.get("fetch.max.wait.ms", KAFKA_DEFAULT_FETCH_MAX_WAIT_MS)) <= KAFKA_DEFAULT_FETCH_MAX_WAIT_MS
        assert int(props["offset.flush.interval.ms"]) == 1000


def test_plugins_are_found_by_their_service_manifests_not_by_scanning_every_class() -> None:
    # only_scan / hybrid_* reflect over every class of plugin.path and the classpath: 20 s of a worker's
    # start on idle cores, 58 s on loaded ones (a replacement worker during a failover). Debezium's
    # connector jar and Kafka's converters and transforms carry ServiceLoader manifests.
    props = worker_props("127.0.0.1:9092", "127.0.0.1", 8083, Path("/plugins"), 1)
    assert props["plugin.discovery"] == "service_load"

"""The consumer's settings: FRESHWIRE_* environment variables, mirrored by command-line flags,
loaded once into a frozen object. A malformed value fails at start with its name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cdc.errors import SettingsError
from contract import envflags, topics
from contract.redis_buckets import Layout, LayoutError, cluster_nodes


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:19092"
    cdc_topic: str = topics.CHANGES
    cdc_group: str = "freshwire-cdc"
    ops_topic: str = topics.OPS
    dlq_topic: str = topics.DLQ
    redis_url: str = "redis://127.0.0.1:16379/0"
    redis_buckets: int = 1
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 500
    rules: str = ""
    cdc_metrics_host: str = "127.0.0.1"
    cdc_metrics_port: int = 19108
    cdc_max_records: int = 2000
    cdc_poll_timeout_ms: int = 200
    cdc_retry_max_s: float = 5.0
    cdc_commit_interval_ms: float = 500.0
    primary_dsn: str = ""
    slot_name: str = "freshwire"
    slot_poll_s: float = 5.0
    replica_dsns: str = ""
    replica_poll_ms: float = 5.0
    max_hold_ms: float = 5000.0
    hold_policy: Literal["release", "hold"] = "release"
    connect_url: str = ""
    connector_name: str = "freshwire-postgres"
    connect_poll_s: float = 2.0
    version_retention_s: float = 0.0
    version_max_keys: int = 0
    trim_interval_s: float = 10.0
    cdc_max_tx_keys: int = 10_000
    cdc_max_tx_key_bytes: int = 256 * 1024
    cdc_max_tx_prefixes: int = 256
    cdc_max_payload_bytes: int = 8 * 1024
    cdc_max_tx_payload_bytes: int = 256 * 1024

    @property
    def replicas(self) -> list[str]:
        return [d.strip() for d in self.replica_dsns.split(",") if d.strip()]

    @property
    def retention_on(self) -> bool:
        return self.version_retention_s > 0 or self.version_max_keys > 0

    @property
    def rules_path(self) -> Path | None:
        return Path(self.rules) if self.rules else None


HELP = {
    "kafka_bootstrap": "Kafka bootstrap servers",
    "cdc_topic": "input topic: every captured table and the transaction markers, one partition",
    "cdc_group": "consumer group (a second instance in the same group is a hot spare)",
    "ops_topic": "ops topic: one JSON record per released transaction",
    "dlq_topic": "dead-letter topic for records that cannot be decoded",
    "redis_url": "Redis holding versions and fanning out to the gateways "
                 "(redis+cluster://host:port,host:port... for a Redis Cluster)",
    "redis_buckets": "buckets the versions and fan-out are spread over (a Redis Cluster: e.g. 4 per master; "
                     "docs/scaling.md); 1 keeps everything in one slot",
    "redis_wait_replicas": "replicas of each master that must hold a release (WAIT) before the Kafka offset "
                           "is committed; 0: off (docs/scaling.md, durability)",
    "redis_wait_timeout_ms": "how long WAIT waits for them; short of them the release is retried",
    "rules": "path of the invalidation rules TOML file (empty: default rules for every table)",
    "cdc_metrics_host": "address of the /metrics, /healthz and /readyz endpoint",
    "cdc_metrics_port": "port of the /metrics, /healthz and /readyz endpoint",
    "cdc_max_records": "records taken from Kafka per consume call",
    "cdc_poll_timeout_ms": "longest wait for the first record (a record ends it at once; idle wake-ups)",
    "cdc_retry_max_s": "longest back-off between retries of Redis or Kafka effects",
    "cdc_commit_interval_ms": "offsets are committed at most this often while records flow (and at once when "
                              "the stream goes quiet, on a revocation and on close); 0: after every chunk",
    "primary_dsn": "the primary, to watch Debezium's replication slot (WAL held, lag, wal_status); empty: off",
    "slot_name": "Debezium's replication slot",
    "slot_poll_s": "how often the slot is read",
    "replica_dsns": "comma-separated replica DSNs: release a transaction only once all have replayed its commit",
    "replica_poll_ms": "how often replicas are asked for their replay position while a batch is held",
    "max_hold_ms": "longest a batch is held for the replicas",
    "hold_policy": "past max_hold: 'release' (counted as stale) or 'hold' (keep waiting)",
    "connect_url": "Kafka Connect's REST URL: watch the connector, restart failed tasks (empty: off)",
    "connector_name": "the Debezium connector's name in Connect",
    "connect_poll_s": "how often the connector's status is read",
    "version_retention_s": "keep versions of keys changed within this many seconds; older ones report the "
                           "retention horizon instead (docs/protocol.md); 0: keep every version",
    "version_max_keys": "keep at most this many keys' versions (the oldest changes go first); 0: no bound",
    "trim_interval_s": "how often versions past the retention horizon are trimmed",
    "cdc_max_tx_keys": "keys one transaction carries one by one; past it keys become prefixes (docs/cdc.md)",
    "cdc_max_tx_key_bytes": "bytes of keys one transaction carries one by one; past it keys become prefixes",
    "cdc_max_tx_prefixes": "prefixes one degraded transaction carries; past it prefixes lose a field",
    "cdc_max_payload_bytes": "largest payload one key carries (rules' `payload`, as JSON); past it the key is "
                             "released without data (the client refetches)",
    "cdc_max_tx_payload_bytes": "payload bytes one transaction carries; past it further keys go without data",
}


PREFIX = "FRESHWIRE_"


def load_settings(argv: list[str] | None = None) -> Settings:
    parser = envflags.parser_for(Settings, PREFIX, HELP, "python -m cdc",
                                 "Freshwire's consumer: Debezium change events in, exact invalidations out.")
    settings = envflags.load(Settings, PREFIX, parser, argv, SettingsError)
    try:
        Layout(settings.redis_buckets)
        cluster_nodes(settings.redis_url)
    except LayoutError as exc:
        raise SettingsError(str(exc)) from None
    if settings.redis_wait_replicas < 0 or settings.redis_wait_timeout_ms <= 0:
        raise SettingsError("FRESHWIRE_REDIS_WAIT_REPLICAS must be 0 or more and FRESHWIRE_REDIS_WAIT_TIMEOUT_MS "
                            "above 0")
    if not 0 <= settings.cdc_commit_interval_ms < math.inf:  # also refuses nan
        raise SettingsError("FRESHWIRE_CDC_COMMIT_INTERVAL_MS must be a finite number of milliseconds, 0 or more")
    return settings

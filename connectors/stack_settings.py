"""Where every part of the native stack lives and listens, read once from FRESHWIRE_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from connectors import cluster_layout
from contract import envflags

REPO = Path(__file__).resolve().parent.parent

KAFKA_VERSION = "4.4.0"
DEBEZIUM_VERSION = "3.6.1.Final"
PG_MAJOR = "15"


class SettingError(ValueError):
    """A FRESHWIRE_* variable is missing or malformed; the message names it."""


Topology = Literal["single", "cluster"]


@dataclass(frozen=True)
class StackSettings:
    """Each field is FRESHWIRE_<FIELD> (FRESHWIRE_REPLICA for `replica`), loaded by the one loader
    every process uses (cdc/envflags.py).

    `topology` "cluster" (connectors/cluster.py) runs every tier as a cluster; its ports and state dir
    default to CLUSTER_DEFAULTS, and each tier's port is the first of its run (cluster_layout.py)."""

    topology: Topology = "single"
    state_dir: Path = REPO / ".state"
    cache_dir: Path = REPO / ".cache"
    pg_port: int = 15432
    redis_port: int = 16379
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    connect_port: int = 18083
    gateway_port: int = 18080
    gateway2_port: int = 18081
    demo_port: int = 18090
    replica_port: int = 15433
    replica: bool = False          # start a streaming standby
    replica_delay_ms: int = 0      # its recovery_min_apply_delay: real, controllable replica lag
    release_gating: bool = True    # the cdc consumer waits for the replica before releasing
    cdc_metrics_port: int = 19108
    haproxy_port: int = 18000      # the cluster's one front door to its gateways (unused by "single")
    pg_bin: Path = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
    host: str = "127.0.0.1"
    redis_fsync: Literal["everysec", "always"] = "everysec"  # Redis appendfsync (docs/tuning.md)

    @property
    def with_replica(self) -> bool:
        return self.replica

    @property
    def jars_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def plugins_dir(self) -> Path:
        return self.cache_dir / f"debezium-{DEBEZIUM_VERSION}" / "plugins"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state_dir / "pids"

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://postgres:postgres@{self.host}:{self.pg_port}/app"

    @property
    def app_dsn(self) -> str:
        return f"postgresql://app:app@{self.host}:{self.pg_port}/app"

    @property
    def replica_dsn(self) -> str:
        return f"postgresql://app:app@{self.host}:{self.replica_port}/app"

    @property
    def cluster(self) -> cluster_layout.ClusterLayout:
        """Every port of the cluster topology; LayoutError if two would clash."""
        return cluster_layout.layout(
            self.host, kafka_port=self.kafka_port, kafka_controller_port=self.kafka_controller_port,
            connect_port=self.connect_port, redis_port=self.redis_port, cdc_metrics_port=self.cdc_metrics_port,
            gateway_port=self.gateway_port, haproxy_port=self.haproxy_port, pg_port=self.pg_port,
            replica_port=self.replica_port, demo_port=self.demo_port)

    @property
    def redis_url(self) -> str:
        if self.topology == "cluster":
            return self.cluster.redis_url
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def kafka_bootstrap(self) -> str:
        if self.topology == "cluster":
            return self.cluster.kafka_bootstrap
        return f"{self.host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        """Connect's REST API: in the cluster, HAProxy in front of every worker."""
        if self.topology == "cluster":
            return self.cluster.connect_proxy_url
        return f"http://{self.host}:{self.connect_port}"

    @property
    def gateway_url(self) -> str:
        """Where clients reach the gateway: in the cluster, HAProxy in front of every gateway."""
        if self.topology == "cluster":
            return self.cluster.haproxy_url
        return f"http://{self.host}:{self.gateway_port}"


# The cluster's own state dir and port block (2xxxx, below the ephemeral range), distinct from every
# single-stack default above, so both stacks can exist on one machine. FRESHWIRE_* variables still win.
CLUSTER_DEFAULTS: dict[str, object] = {
    "state_dir": REPO / ".state-cluster",
    "pg_port": 25432,
    "replica_port": 25433,
    "redis_port": 26379,           # 6 nodes: 26379-26384, cluster bus ports 27379-27384
    "kafka_port": 29092,           # 3 brokers: 29092-29094
    "kafka_controller_port": 29192,  # their controllers: 29192-29194
    "connect_port": 28083,         # 2 workers: 28083-28084
    "gateway_port": 28080,         # 3 gateways: 28080-28082
    "gateway2_port": 28180,        # unused by the cluster; kept out of the single stack's block
    "haproxy_port": 28000,         # clients; Connect's REST API on 28001, stats on 28002
    "demo_port": 28090,
    "cdc_metrics_port": 29108,     # 2 consumers: 29108-29109
}


def cluster_settings(**overrides: object) -> StackSettings:
    """The cluster topology with CLUSTER_DEFAULTS under `overrides`."""
    return StackSettings(**{**CLUSTER_DEFAULTS, **overrides, "topology": "cluster"})  # type: ignore[arg-type]


def load_stack_settings() -> StackSettings:
    found = envflags.values(StackSettings, "FRESHWIRE_", {}, SettingError)
    for name in ("state_dir", "cache_dir", "pg_bin"):
        if name in found:
            found[name] = Path(str(found[name])).resolve()
    if found.get("topology") != "cluster":
        return StackSettings(**found)  # type: ignore[arg-type]
    settings = cluster_settings(**found)
    try:
        settings.cluster  # noqa: B018 (fail at start, naming the ports, not when a process cannot bind)
    except cluster_layout.LayoutError as exc:
        raise SettingError(str(exc)) from None
    return settings

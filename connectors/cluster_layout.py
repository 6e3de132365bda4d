"""Where every process of the cluster topology listens: pure, derived from a few base ports.

Each tier's processes take consecutive ports from its base (brokers 29092, 29093, 29094, ...). The
cluster's whole block sits below EPHEMERAL_PORT_FLOOR, so that no port can be held by an outgoing
connection's ephemeral port when a process (re)starts (Linux hands those out from 32768 up).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

KAFKA_NODES = 3            # KRaft, each broker and controller (a static voter)
CONNECT_WORKERS = 2        # one Connect group
REDIS_NODES = 6            # Redis Cluster: REDIS_NODES / (1 + REDIS_REPLICAS_PER_MASTER) masters
REDIS_REPLICAS_PER_MASTER = 1
CDC_PROCESSES = 2          # one consumer group: one active, one hot spare
GATEWAYS = 3               # behind HAProxy
REDIS_BUS_OFFSET = 1000    # a Redis node's cluster bus port: its port + this (set explicitly, never port + 10000)
REDIS_BUCKETS = 12         # the cdc consumers' FRESHWIRE_REDIS_BUCKETS in the cluster
EPHEMERAL_PORT_FLOOR = 32768  # Linux's default ip_local_port_range starts here


class LayoutError(ValueError):
    """Two processes of the cluster would share a port, or a port sits in the ephemeral range."""


@dataclass(frozen=True)
class ClusterLayout:
    host: str
    kafka_ports: tuple[int, ...]
    controller_ports: tuple[int, ...]
    connect_ports: tuple[int, ...]
    redis_ports: tuple[int, ...]
    cdc_metrics_ports: tuple[int, ...]
    gateway_ports: tuple[int, ...]
    haproxy_port: int
    pg_port: int
    replica_port: int  # reserved even when no replica runs
    demo_port: int

    @property
    def redis_bus_ports(self) -> tuple[int, ...]:
        return tuple(p + REDIS_BUS_OFFSET for p in self.redis_ports)

    @property
    def redis_masters(self) -> int:
        return len(self.redis_ports) // (1 + REDIS_REPLICAS_PER_MASTER)

    @property
    def kafka_bootstrap(self) -> str:
        return ",".join(f"{self.host}:{p}" for p in self.kafka_ports)

    @property
    def quorum_voters(self) -> str:
        """`controller.quorum.voters`: node ids 1..n, each at its controller port."""
        return ",".join(f"{i}@{self.host}:{p}" for i, p in enumerate(self.controller_ports, start=1))

    @property
    def connect_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.host}:{p}" for p in self.connect_ports)

    @property
    def redis_url(self) -> str:
        """The apps' FRESHWIRE_REDIS_URL: the nodes created as masters, as seeds (any node would do)."""
        seeds = ",".join(f"{self.host}:{p}" for p in self.redis_ports[: self.redis_masters])
        return f"redis+cluster://{seeds}"

    @property
    def cdc_metrics_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.host}:{p}" for p in self.cdc_metrics_ports)

    @property
    def gateway_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.host}:{p}" for p in self.gateway_ports)

    @property
    def haproxy_url(self) -> str:
        return f"http://{self.host}:{self.haproxy_port}"

    @property
    def connect_proxy_port(self) -> int:
        return self.haproxy_port + 1

    @property
    def connect_proxy_url(self) -> str:
        """Connect's REST API through HAProxy: whichever worker is up (any worker forwards to the leader)."""
        return f"http://{self.host}:{self.connect_proxy_port}"

    @property
    def haproxy_stats_port(self) -> int:
        return self.haproxy_port + 2

    @property
    def haproxy_stats_url(self) -> str:
        """HAProxy's stats as CSV: which gateway and which Connect worker it routes to (column `status`)."""
        return f"http://{self.host}:{self.haproxy_stats_port}/stats;csv"

    @property
    def haproxy_ws_url(self) -> str:
        """Where clients and the demo connect: every gateway, through HAProxy."""
        return f"ws://{self.host}:{self.haproxy_port}/ws"

    def ports(self) -> dict[str, int]:
        """Every port the cluster listens on, by process and role (`kafka2`, `redis4-bus`, ...)."""
        named = {"postgres": self.pg_port, "replica": self.replica_port, "haproxy": self.haproxy_port,
                 "haproxy-connect": self.connect_proxy_port, "haproxy-stats": self.haproxy_stats_port,
                 "demo": self.demo_port}
        for prefix, ports in (("kafka", self.kafka_ports), ("kafka-controller", self.controller_ports),
                              ("connect", self.connect_ports), ("redis", self.redis_ports),
                              ("redis-bus", self.redis_bus_ports), ("cdc-metrics", self.cdc_metrics_ports),
                              ("gateway", self.gateway_ports)):
            named.update({f"{prefix}{i}": p for i, p in enumerate(ports, start=1)})
        return named


def _run(base: int, count: int) -> tuple[int, ...]:
    return tuple(range(base, base + count))


def layout(host: str, *, kafka_port: int, kafka_controller_port: int, connect_port: int, redis_port: int,
           cdc_metrics_port: int, gateway_port: int, haproxy_port: int, pg_port: int,
           replica_port: int, demo_port: int) -> ClusterLayout:
    """The cluster's ports from each tier's base port. Raises LayoutError on any clash."""
    found = ClusterLayout(
        host=host,
        kafka_ports=_run(kafka_port, KAFKA_NODES),
        controller_ports=_run(kafka_controller_port, KAFKA_NODES),
        connect_ports=_run(connect_port, CONNECT_WORKERS),
        redis_ports=_run(redis_port, REDIS_NODES),
        cdc_metrics_ports=_run(cdc_metrics_port, CDC_PROCESSES),
        gateway_ports=_run(gateway_port, GATEWAYS),
        haproxy_port=haproxy_port,
        pg_port=pg_port,
        replica_port=replica_port,
        demo_port=demo_port,
    )
    check(found)
    return found


def check(found: ClusterLayout) -> None:
    ports = found.ports()
    clashes = sorted(p for p, n in Counter(ports.values()).items() if n > 1)
    if clashes:
        who = {p: sorted(name for name, q in ports.items() if q == p) for p in clashes}
        raise LayoutError("cluster ports clash: "
                          + "; ".join(f"{p} for {', '.join(names)}" for p, names in who.items()))
    high = sorted(name for name, p in ports.items() if not 0 < p < EPHEMERAL_PORT_FLOOR)
    if high:
        raise LayoutError(f"cluster ports must be in 1..{EPHEMERAL_PORT_FLOOR - 1} (the ephemeral range starts at "
                          f"{EPHEMERAL_PORT_FLOOR}): {', '.join(f'{n}={ports[n]}' for n in high)}")

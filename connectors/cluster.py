"""The cluster topology (FRESHWIRE_TOPOLOGY=cluster): the single stack's PostgreSQL, then every other
tier as a cluster on 127.0.0.1: a 3-node KRaft quorum (RF 3, min ISR 2), 2 Connect workers in one group
with exactly-once source support, a 6-node Redis Cluster (3 masters, 3 replicas), 2 cdc consumers in one
group (one active, one hot spare), 3 gateways behind HAProxy, and the demo.

Ports: cluster_layout.py; configuration: cluster_config.py; this module only writes files and builds
processes. connectors/stack.py starts, watches and stops them as it does the single stack's.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from cdc.rules import load_rules
from connectors import register, services
from connectors.cluster_config import (
    EXACTLY_ONCE_OVERRIDES,
    REPLICATION_FACTOR,
    cdc_env,
    connect_worker_props,
    haproxy_config,
    kafka_node_props,
    parse_cluster_info,
    redis_create_argv,
    redis_node_argv,
    redis_plan,
    servers_up,
)
from connectors.cluster_layout import (
    CDC_PROCESSES,
    CONNECT_WORKERS,
    GATEWAYS,
    KAFKA_NODES,
    REDIS_NODES,
    REDIS_REPLICAS_PER_MASTER,
)
from connectors.part import Part
from connectors.procs import Proc
from connectors.stack_settings import REPO, StackSettings

JVM_BROKER_HEAP = ["-Xms192m", "-Xmx448m"]
JVM_CONNECT_HEAP = ["-Xms192m", "-Xmx512m"]
REDIS_FORM_TIMEOUT_S = 60.0
REDIS_CLI_TIMEOUT_S = 5.0

KAFKA = [f"kafka{i}" for i in range(1, KAFKA_NODES + 1)]
CONNECT = [f"connect{i}" for i in range(1, CONNECT_WORKERS + 1)]
REDIS = [f"redis{i}" for i in range(1, REDIS_NODES + 1)]
CDC = [f"cdc{i}" for i in range(1, CDC_PROCESSES + 1)]
GATEWAY = [f"gateway{i}" for i in range(1, GATEWAYS + 1)]
# Start order; stopping goes the other way. HAProxy comes before the apps: the cdc consumers watch
# the connector through it (whichever Connect worker is up), the gateways wait until it routes to them.
ORDER = ["postgres", "replica", *REDIS, *KAFKA, *CONNECT, "haproxy", *CDC, *GATEWAY, "demo"]
ROUTE_TIMEOUT_S = 15.0  # HAProxy marks a server UP after 2 good checks a second apart


class ClusterFormError(RuntimeError):
    """The Redis nodes did not form one healthy cluster; the message says which node disagrees."""


class RoutingError(RuntimeError):
    """HAProxy does not route to every gateway that answers /readyz; the message names the missing ones."""


# ---------------------------------------------------------------- Kafka (KRaft, static voters)

def kafka_cluster_id(root: Path) -> str:
    """The quorum's cluster id, made once and kept beside the nodes (a Kafka Uuid: 16 random bytes,
    URL-safe base64 without padding, never starting with '-')."""
    path = root / "cluster.id"
    if path.exists():
        return path.read_text().strip()
    found = "-"
    while found.startswith("-"):
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(found + "\n")
    return found


def kafka_node_proc(s: StackSettings, node: int) -> Proc:
    lay, name = s.cluster, KAFKA[node - 1]
    root = s.state_dir / name
    props = root / "server.properties"
    services.write_props(props, kafka_node_props(lay, node, root / "data", services.MAX_BROKER_MESSAGE_BYTES))
    (root / "log4j2.properties").write_text(services.LOG4J2)
    classpath = f"{s.jars_dir}/*"
    if not (root / "data" / "meta.properties").exists():
        subprocess.run(
            [services.java_bin(), "-cp", classpath, "kafka.tools.StorageTool", "format",
             "-t", kafka_cluster_id(s.state_dir / "kafka"), "-c", str(props)],
            check=True, capture_output=True,
        )
    port = lay.kafka_ports[node - 1]
    return Proc(
        name=name,
        port=port,
        argv=[services.java_bin(), *JVM_BROKER_HEAP, f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
              "-cp", classpath, "kafka.Kafka", str(props)],
        log=s.logs_dir / f"{name}.log",
        ready=lambda: _kafka_node_ready(s.host, port, node),
        ready_timeout_s=180,
    )


def _kafka_node_ready(host: str, port: int, node: int) -> bool:
    """Its own listener answers metadata and lists it as a live broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "socket.timeout.ms": 1000, "log_level": 0})
    return node in admin.list_topics(timeout=1).brokers


def create_topics(s: StackSettings) -> None:
    services.create_topics(s, replication_factor=REPLICATION_FACTOR)


# ---------------------------------------------------------------- Kafka Connect (distributed, one group)

def connect_worker_proc(s: StackSettings, worker: int) -> Proc:
    lay, name = s.cluster, CONNECT[worker - 1]
    root = s.state_dir / name
    props = root / "connect.properties"
    services.write_props(props, connect_worker_props(lay, worker, s.plugins_dir))
    (root / "log4j2.properties").write_text(services.LOG4J2)
    url = lay.connect_urls[worker - 1]
    # The same timer slack as the single stack's worker (connectors/services.py, docs/tuning.md).
    java = services.slack_launcher(root / "bin" / "java", services.CONNECT_TIMER_SLACK_NS, services.java_bin())
    return Proc(
        name=name,
        port=lay.connect_ports[worker - 1],
        argv=[str(java), *JVM_CONNECT_HEAP, f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
              "-cp", f"{s.jars_dir}/*", "org.apache.kafka.connect.cli.ConnectDistributed", str(props)],
        log=s.logs_dir / f"{name}.log",
        ready=lambda: services.connect_lists_debezium(url),
        ready_timeout_s=240,
    )


def register_connector(s: StackSettings) -> None:
    """Once, through the first worker (Connect forwards it to the group's leader)."""
    register.register(s.cluster.connect_urls[0], s.host, s.pg_port, pg_dsn=s.pg_dsn,
                      overrides=EXACTLY_ONCE_OVERRIDES, rules=load_rules(services.RULES_FILE), timeout_s=180)


# ---------------------------------------------------------------- Redis Cluster

def _redis_cli() -> str:
    return shutil.which("redis-cli") or "/usr/bin/redis-cli"


def redis_node_proc(s: StackSettings, node: int) -> Proc:
    lay, name = s.cluster, REDIS[node - 1]
    data = s.state_dir / name
    data.mkdir(parents=True, exist_ok=True)
    port = lay.redis_ports[node - 1]
    return Proc(
        name=name,
        port=port,
        argv=redis_node_argv(shutil.which("redis-server") or "/usr/bin/redis-server", lay, node, data, s.redis_fsync),
        log=s.logs_dir / f"{name}.log",
        ready=lambda: services.redis_pings(s.host, port),
        ready_timeout_s=30,
    )


def _cluster_info(host: str, port: int) -> dict[str, str]:
    out = subprocess.run([_redis_cli(), "-h", host, "-p", str(port), "cluster", "info"],
                         capture_output=True, text=True, timeout=REDIS_CLI_TIMEOUT_S)
    return parse_cluster_info(out.stdout)


def form_redis_cluster(s: StackSettings) -> None:
    """Create the cluster if no node has joined one yet, then wait for every node to see all the
    others and `cluster_state:ok`. Idempotent: a formed cluster (nodes-*.conf kept) is only waited for."""
    lay = s.cluster
    infos = {p: _cluster_info(s.host, p) for p in lay.redis_ports}
    if redis_plan(list(infos.values()), REDIS_NODES) == "create":
        with open(s.logs_dir / "redis-create.log", "ab") as log:
            subprocess.run(redis_create_argv(_redis_cli(), lay, REDIS_REPLICAS_PER_MASTER), check=True,
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=REDIS_FORM_TIMEOUT_S)
    deadline = time.monotonic() + REDIS_FORM_TIMEOUT_S
    while True:
        infos = {p: _cluster_info(s.host, p) for p in lay.redis_ports}
        if redis_plan(list(infos.values()), REDIS_NODES) == "ready":
            return
        if time.monotonic() > deadline:
            lagging = {p: (i.get("cluster_state"), i.get("cluster_known_nodes")) for p, i in infos.items()
                       if i.get("cluster_state") != "ok" or i.get("cluster_known_nodes") != str(REDIS_NODES)}
            raise ClusterFormError(f"Redis Cluster not ok after {REDIS_FORM_TIMEOUT_S:.0f}s: (state, known nodes) "
                                   f"by port {lagging}; a node that lost its nodes-*.conf needs "
                                   "`FRESHWIRE_TOPOLOGY=cluster python -m connectors.stack clean`")
        time.sleep(0.25)


# ---------------------------------------------------------------- Freshwire's processes and HAProxy

def cdc_proc(s: StackSettings, process: int) -> Proc:
    lay, name = s.cluster, CDC[process - 1]
    port = lay.cdc_metrics_ports[process - 1]
    return Proc(
        name=name,
        port=port,
        argv=[sys.executable, "-m", "cdc"],
        env=cdc_env(services.app_env(s), lay, process),
        cwd=REPO,
        log=s.logs_dir / f"{name}.log",
        ready=lambda: services.http_ok(f"{lay.cdc_metrics_urls[process - 1]}/readyz"),
        ready_timeout_s=90,
    )


def gateway_proc(s: StackSettings, n: int) -> Proc:
    return services.gateway_proc(s, GATEWAY[n - 1], s.cluster.gateway_ports[n - 1])


def haproxy_proc(s: StackSettings) -> Proc:
    lay = s.cluster
    config = s.state_dir / "haproxy" / "haproxy.cfg"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(haproxy_config(lay))
    return Proc(
        name="haproxy",
        port=lay.haproxy_port,
        argv=[shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(config)],
        log=s.logs_dir / "haproxy.log",
        ready=lambda: services.http_ok(f"{lay.connect_proxy_url}/"),
        ready_timeout_s=30,
    )


def wait_routed(s: StackSettings) -> None:
    """After the gateways are ready: until HAProxy shows every one of them UP."""
    lay = s.cluster
    wanted = set(GATEWAY)
    deadline = time.monotonic() + ROUTE_TIMEOUT_S
    up: set[str] = set()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(lay.haproxy_stats_url, timeout=2) as r:
                up = servers_up(r.read().decode(), "gateways")
        except OSError:
            up = set()
        if wanted <= up:
            return
        time.sleep(0.25)
    raise RoutingError(f"HAProxy routes to no {', '.join(sorted(wanted - up))} after {ROUTE_TIMEOUT_S:.0f}s "
                       f"(see {lay.haproxy_stats_url} and {s.logs_dir / 'haproxy.log'})")


def demo_proc(s: StackSettings) -> Proc:
    proc = services.demo_proc(s)
    proc.env["FRESHWIRE_DEMO_GATEWAY_WS"] = s.cluster.haproxy_ws_url
    return proc


def _nth(build: Callable[[StackSettings, int], Proc], n: int) -> Callable[[StackSettings], Proc]:
    return lambda s: build(s, n)


def _tier(names: list[str], build: Callable[[StackSettings, int], Proc], *, after: Callable[[StackSettings], None]
          | None = None, after_always: bool = False, app: bool = False) -> list[Part]:
    """One part per process of a tier, started together; `after` follows once all of them are ready."""
    found = [Part(name, _nth(build, i), app=app, group=names[0].rstrip("0123456789"))
             for i, name in enumerate(names, start=1)]
    found[-1].after, found[-1].after_always = after, after_always
    return found


def parts(s: StackSettings) -> list[Part]:
    """Every part of the cluster in start order."""
    return [
        Part("postgres", services.postgres_proc, after=services.postgres_setup, after_always=True),
        *([Part("replica", services.replica_proc)] if s.with_replica else []),
        # Forming the Redis Cluster is idempotent and cheap: checked on every `up`.
        *_tier(REDIS, redis_node_proc, after=form_redis_cluster, after_always=True),
        *_tier(KAFKA, kafka_node_proc, after=create_topics),
        *_tier(CONNECT, connect_worker_proc, after=register_connector),
        Part("haproxy", haproxy_proc),
        *_tier(CDC, cdc_proc, app=True),
        *_tier(GATEWAY, gateway_proc, after=wait_routed, after_always=True, app=True),
        Part("demo", demo_proc, app=True),
    ]


def describe(s: StackSettings) -> str:
    lay = s.cluster

    def hosts(ports: tuple[int, ...]) -> str:
        return " ".join(f"{s.host}:{p}" for p in ports)

    return "\n".join([
        "Freshwire (cluster) is ready:",
        f"  postgres   {s.host}:{s.pg_port}  (db app; user app/app; superuser postgres/postgres)",
        *([f"  replica    {s.host}:{s.replica_port}  (standby, apply delay {s.replica_delay_ms} ms)"]
          if s.with_replica else []),
        f"  redis      {lay.redis_url}  (6 nodes {hosts(lay.redis_ports)}; bus {hosts(lay.redis_bus_ports)})",
        f"  kafka      {lay.kafka_bootstrap}  (controllers {hosts(lay.controller_ports)}; RF {REPLICATION_FACTOR})",
        f"  connect    {lay.connect_proxy_url} (HAProxy) = {' '.join(lay.connect_urls)}  "
        "(connector freshwire-postgres, exactly-once)",
        f"  cdc        metrics {' '.join(u + '/metrics' for u in lay.cdc_metrics_urls)}",
        f"  gateways   {' '.join(lay.gateway_urls)}",
        f"  haproxy    {lay.haproxy_ws_url}   http {lay.haproxy_url}/readyz   stats {lay.haproxy_stats_url}",
        f"  demo       http://{s.host}:{s.demo_port}/",
        f"  logs       {s.logs_dir}",
    ])

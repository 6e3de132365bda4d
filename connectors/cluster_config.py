"""The cluster topology's configuration, as pure functions of its layout: each Kafka node's and each
Connect worker's properties, each Redis node's command line, HAProxy's config file, and what the
connector and the app processes get on top of the single stack's settings. No files, no processes
(connectors/cluster.py writes and runs them)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from connectors.cluster_layout import REDIS_BUCKETS, ClusterLayout
from connectors.connect_config import Props, worker_props

REPLICATION_FACTOR = 3   # every topic, the internal ones too
MIN_INSYNC_REPLICAS = 2  # an acks=all write survives the loss of any one broker
INTERNAL_TOPIC_PARTITIONS = 5  # offsets and transaction state (50 by default: slow to create on 2 cores)
BROKER_SESSION_TIMEOUT_MS = 2000  # a silent broker is fenced after this: its partitions get new leaders
BROKER_HEARTBEAT_MS = 250
CDC_RETRY_MAX_S = 0.5  # the consumers' longest back-off between retries of an effect
REDIS_NODE_TIMEOUT_MS = 2000  # a master silent this long is failed over to its replica
HAPROXY_MAXCONN = 9000    # HAProxy needs ~2 descriptors a connection: stays under a 20,000 hard `ulimit -n`
HAPROXY_TUNNEL_TIMEOUT = "1h"  # an idle WebSocket lives this long (clients ping well within it)
HAPROXY_CHECK_INTER = "1s"     # /readyz on every gateway this often; 2 failures take it out, 2 successes back

# Connect's exactly-once source support (KIP-618): each task's records and its source offsets commit
# in one Kafka transaction, and a task's producer is fenced when the task starts elsewhere.
EXACTLY_ONCE_OVERRIDES = {"exactly.once.support": "required", "transaction.boundary": "poll"}



def kafka_node_props(lay: ClusterLayout, node: int, data_dir: Path, max_message_bytes: int) -> Props:
    """Node `node` (1-based) of the KRaft quorum: broker and controller, a static voter."""
    port, controller = lay.kafka_ports[node - 1], lay.controller_ports[node - 1]
    return {
        "process.roles": "broker,controller",
        "node.id": node,
        "controller.quorum.voters": lay.quorum_voters,
        "listeners": f"PLAINTEXT://{lay.host}:{port},CONTROLLER://{lay.host}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{lay.host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": 1,
        "default.replication.factor": REPLICATION_FACTOR,
        "min.insync.replicas": MIN_INSYNC_REPLICAS,
        "unclean.leader.election.enable": "false",
        # A broker that dies (SIGKILL, a lost host) is fenced after this much silence, and its partitions'
        # leadership (and the groups it coordinates) move: the default 9 s would stall the input topic and
        # expire the consumers' 6 s sessions (docs/scaling.md).
        "broker.session.timeout.ms": BROKER_SESSION_TIMEOUT_MS,
        "broker.heartbeat.interval.ms": BROKER_HEARTBEAT_MS,
        "offsets.topic.replication.factor": REPLICATION_FACTOR,
        "offsets.topic.num.partitions": INTERNAL_TOPIC_PARTITIONS,
        "transaction.state.log.replication.factor": REPLICATION_FACTOR,
        "transaction.state.log.min.isr": MIN_INSYNC_REPLICAS,
        "transaction.state.log.num.partitions": INTERNAL_TOPIC_PARTITIONS,
        "share.coordinator.state.topic.replication.factor": REPLICATION_FACTOR,
        "share.coordinator.state.topic.min.isr": MIN_INSYNC_REPLICAS,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "true",
        "message.max.bytes": max_message_bytes,
        "replica.fetch.max.bytes": max_message_bytes,
    }


def connect_worker_props(lay: ClusterLayout, worker: int, plugins_dir: Path) -> Props:
    """Worker `worker` (1-based) of the one distributed Connect group."""
    port = lay.connect_ports[worker - 1]
    return {
        **worker_props(lay.kafka_bootstrap, lay.host, port, plugins_dir, REPLICATION_FACTOR),
        "exactly.once.source.support": "enabled",
        # Every producer of the worker (its internal topics' and, unless overridden, its tasks').
        "producer.acks": "all",
        "producer.enable.idempotence": "true",
    }


def redis_node_argv(redis_server: str, lay: ClusterLayout, node: int, data_dir: Path, fsync: str) -> list[str]:
    """Node `node` (1-based) of the Redis Cluster; AOF on, as the single stack's Redis."""
    port, bus = lay.redis_ports[node - 1], lay.redis_bus_ports[node - 1]
    return [redis_server, "--port", str(port), "--bind", lay.host, "--dir", str(data_dir),
            "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(bus), "--cluster-node-timeout", str(REDIS_NODE_TIMEOUT_MS),
            "--save", "", "--appendonly", "yes", "--appendfsync", fsync, "--protected-mode", "yes"]


def redis_create_argv(redis_cli: str, lay: ClusterLayout, replicas: int) -> list[str]:
    """`redis-cli --cluster create`: the first len/(1+replicas) nodes become the masters."""
    return [redis_cli, "--cluster", "create", *(f"{lay.host}:{p}" for p in lay.redis_ports),
            "--cluster-replicas", str(replicas), "--cluster-yes"]


def parse_cluster_info(text: str) -> dict[str, str]:
    """`CLUSTER INFO`'s `key:value` lines as a dict (empty for no answer)."""
    pairs = (line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: v for k, v in pairs}


RedisPlan = Literal["create", "wait", "ready"]


def redis_plan(infos: list[dict[str, str]], nodes: int) -> RedisPlan:
    """What the Redis nodes' `CLUSTER INFO` calls for: "create" when none has joined a cluster yet
    (each knows only itself, no slot assigned), "ready" when each sees all `nodes` and is ok, else
    "wait" (gossip or a failover in progress, or a node not answering)."""
    if all(i and i.get("cluster_known_nodes") == "1" and i.get("cluster_slots_assigned") == "0" for i in infos):
        return "create"
    if all(i.get("cluster_state") == "ok" and i.get("cluster_known_nodes") == str(nodes) for i in infos):
        return "ready"
    return "wait"


def haproxy_config(lay: ClusterLayout) -> str:
    """HAProxy's three frontends: clients and the demo (WebSockets balanced over the gateways that
    answer /readyz; a connect that fails is retried on another gateway), Connect's REST API (whichever
    worker answers), and the stats (CSV). No request log: run in the foreground (-db), HAProxy writes
    its warnings (a server DOWN or UP) to stderr, its log file."""
    gateways = "\n".join(f"    server gateway{i} {lay.host}:{p} check"
                         for i, p in enumerate(lay.gateway_ports, start=1))
    workers = "\n".join(f"    server connect{i} {lay.host}:{p} check"
                        for i, p in enumerate(lay.connect_ports, start=1))
    return f"""global
    maxconn {HAPROXY_MAXCONN}

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout client-fin 5s
    timeout tunnel {HAPROXY_TUNNEL_TIMEOUT}
    retries 3
    option redispatch 1
    default-server inter {HAPROXY_CHECK_INTER} fall 2 rise 2

frontend clients
    bind {lay.host}:{lay.haproxy_port}
    default_backend gateways

backend gateways
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
{gateways}

frontend connect
    bind {lay.host}:{lay.connect_proxy_port}
    default_backend connect_workers

backend connect_workers
    option httpchk GET /
    http-check expect status 200
{workers}

frontend stats
    bind {lay.host}:{lay.haproxy_stats_port}
    stats enable
    stats uri /stats
"""


def servers_up(stats_csv: str, backend: str) -> set[str]:
    """The servers of `backend` that HAProxy's stats CSV shows UP (not going down, not in maintenance)."""
    lines = stats_csv.splitlines()
    if not lines or not lines[0].startswith("# "):
        return set()
    rows = csv.DictReader(lines[1:], fieldnames=lines[0][2:].split(","))
    return {r["svname"] for r in rows
            if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND") and r["status"] == "UP"}


def cdc_env(base: dict[str, str], lay: ClusterLayout, process: int) -> dict[str, str]:
    """cdc process `process` (1-based): the apps' env (services.app_env, which already names the
    cluster's brokers, Redis nodes and Connect through HAProxy), its own metrics port, and the Redis
    buckets only cdc reads. Its retries back off to at most CDC_RETRY_MAX_S: a Redis failover takes
    ~4 s, and a 5 s back-off step would add up to 5 s more after it."""
    return {**base, "FRESHWIRE_CDC_METRICS_PORT": str(lay.cdc_metrics_ports[process - 1]),
            "FRESHWIRE_REDIS_BUCKETS": str(REDIS_BUCKETS), "FRESHWIRE_CDC_RETRY_MAX_S": str(CDC_RETRY_MAX_S)}

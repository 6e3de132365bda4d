"""The cluster topology's configuration (FRESHWIRE_TOPOLOGY=cluster): its port block, the settings it
loads, and every file and command line it generates. No processes."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from connectors import cluster, register, services, stack
from connectors.cluster_config import (
    EXACTLY_ONCE_OVERRIDES,
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
    EPHEMERAL_PORT_FLOOR,
    REDIS_BUCKETS,
    ClusterLayout,
    LayoutError,
    layout,
)
from connectors.connect_config import CONNECT_GROUP
from connectors.stack_settings import (
    CLUSTER_DEFAULTS,
    REPO,
    SettingError,
    StackSettings,
    cluster_settings,
    load_stack_settings,
)

LAY = cluster_settings().cluster
SINGLE_PORTS = {getattr(StackSettings(), f.name) for f in fields(StackSettings) if f.name.endswith("_port")}


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in fields(StackSettings):
        monkeypatch.delenv(f"FRESHWIRE_{f.name.upper()}", raising=False)


# ---------------------------------------------------------------- the port block and the settings

def test_cluster_layout_ports_are_distinct_below_the_ephemeral_range_and_apart_from_the_single_stack() -> None:
    ports = LAY.ports()
    assert len(set(ports.values())) == len(ports) == 31
    assert all(0 < p < EPHEMERAL_PORT_FLOOR for p in ports.values())
    assert not set(ports.values()) & SINGLE_PORTS
    assert not set(ports.values()) & {p + 10000 for p in LAY.redis_ports}  # the bus is never Redis's default


def test_cluster_layout_counts_and_urls() -> None:
    assert (len(LAY.kafka_ports), len(LAY.connect_ports), len(LAY.redis_ports), len(LAY.cdc_metrics_ports),
            len(LAY.gateway_ports)) == (3, 2, 6, 2, 3)
    assert LAY.kafka_bootstrap == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    assert LAY.quorum_voters == "1@127.0.0.1:29192,2@127.0.0.1:29193,3@127.0.0.1:29194"
    assert LAY.redis_url == "redis+cluster://127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381"
    assert LAY.connect_urls == ("http://127.0.0.1:28083", "http://127.0.0.1:28084")
    assert LAY.haproxy_ws_url == "ws://127.0.0.1:28000/ws"
    assert LAY.connect_proxy_url == "http://127.0.0.1:28001"
    assert LAY.haproxy_stats_url == "http://127.0.0.1:28002/stats;csv"
    assert LAY.redis_bus_ports == (27379, 27380, 27381, 27382, 27383, 27384)


def _layout(**changes: int) -> ClusterLayout:
    bases = {"kafka_port": 29092, "kafka_controller_port": 29192, "connect_port": 28083, "redis_port": 26379,
             "cdc_metrics_port": 29108, "gateway_port": 28080, "haproxy_port": 28000, "pg_port": 25432,
             "replica_port": 25433, "demo_port": 28090}
    return layout("127.0.0.1", **{**bases, **changes})


def test_cluster_layout_refuses_a_clash_naming_both_processes() -> None:
    with pytest.raises(LayoutError, match=r"29093 for kafka-controller1, kafka2"):
        _layout(kafka_controller_port=29093)


def test_cluster_layout_refuses_a_port_in_the_ephemeral_range() -> None:
    with pytest.raises(LayoutError, match="redis-bus6=32768"):
        _layout(redis_port=31763)  # its bus ports run up to 32768


def test_cluster_settings_single_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_env(monkeypatch)
    assert load_stack_settings() == StackSettings()
    assert StackSettings().topology == "single"
    assert StackSettings().state_dir == REPO / ".state"
    assert StackSettings().kafka_bootstrap == "127.0.0.1:19092"
    assert StackSettings().redis_url == "redis://127.0.0.1:16379/0"
    assert StackSettings().gateway_url == "http://127.0.0.1:18080"
    assert StackSettings().connect_url == "http://127.0.0.1:18083"


def test_cluster_settings_from_the_environment_take_the_cluster_block(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("FRESHWIRE_TOPOLOGY", "cluster")
    s = load_stack_settings()
    assert s == cluster_settings()
    assert s.state_dir == REPO / ".state-cluster"
    assert (s.pg_port, s.demo_port) == (25432, 28090)
    assert s.kafka_bootstrap == LAY.kafka_bootstrap and s.redis_url == LAY.redis_url
    assert s.gateway_url == "http://127.0.0.1:28000"  # clients reach the gateways through HAProxy
    assert s.connect_url == "http://127.0.0.1:28001"  # and Connect's REST API too
    monkeypatch.setenv("FRESHWIRE_PG_PORT", "25500")
    assert load_stack_settings().pg_port == 25500  # a variable still wins over CLUSTER_DEFAULTS


def test_cluster_settings_refuse_an_unknown_topology_and_a_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv("FRESHWIRE_TOPOLOGY", "mesh")
    with pytest.raises(SettingError, match="FRESHWIRE_TOPOLOGY must be one of single, cluster"):
        load_stack_settings()
    monkeypatch.setenv("FRESHWIRE_TOPOLOGY", "cluster")
    monkeypatch.setenv("FRESHWIRE_GATEWAY_PORT", "28089")  # gateways 28089-28091 take the demo's 28090
    with pytest.raises(SettingError, match="28090 for demo, gateway2"):
        load_stack_settings()


def test_cluster_settings_defaults_cover_a_state_dir_of_its_own() -> None:
    assert CLUSTER_DEFAULTS["state_dir"] != StackSettings().state_dir


# ---------------------------------------------------------------- Kafka and Connect

@pytest.mark.parametrize("node", [1, 2, 3])
def test_cluster_kafka_node_is_a_static_voter_with_rf3_and_min_isr2(node: int) -> None:
    props = kafka_node_props(LAY, node, Path("/d"), 1000)
    assert props["node.id"] == node
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == LAY.quorum_voters
    assert "controller.quorum.bootstrap.servers" not in props
    port, controller = LAY.kafka_ports[node - 1], LAY.controller_ports[node - 1]
    assert props["listeners"] == f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"
    assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{port}"
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == 3
    assert props["transaction.state.log.replication.factor"] == 3
    assert props["share.coordinator.state.topic.replication.factor"] == 3
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == 2
    assert props["unclean.leader.election.enable"] == "false"
    assert props["message.max.bytes"] == props["replica.fetch.max.bytes"] == 1000


def test_cluster_connect_workers_share_a_group_each_on_its_own_port() -> None:
    one, two = (connect_worker_props(LAY, w, Path("/plugins")) for w in (1, 2))
    assert one["group.id"] == two["group.id"] == CONNECT_GROUP
    assert (one["listeners"], two["listeners"]) == ("http://127.0.0.1:28083", "http://127.0.0.1:28084")
    assert one["rest.advertised.port"] == 28083
    assert one["bootstrap.servers"] == LAY.kafka_bootstrap
    for key in ("config", "offset", "status"):
        assert one[f"{key}.storage.replication.factor"] == 3
    assert one["scheduled.rebalance.max.delay.ms"] == 0
    assert one["exactly.once.source.support"] == "enabled"
    assert one["producer.acks"] == "all"
    assert one["connector.client.config.override.policy"] == "All"


def test_cluster_connector_requires_exactly_once_and_acks_all() -> None:
    _, config = register.connector_config("127.0.0.1", 25432, EXACTLY_ONCE_OVERRIDES)
    assert config["exactly.once.support"] == "required"
    assert config["transaction.boundary"] == "poll"
    assert config["producer.override.acks"] == "all"
    assert config["tasks.max"] == "1"
    assert config["database.port"] == "25432"


def test_cluster_kafka_cluster_id_is_made_once(tmp_path: Path) -> None:
    first = cluster.kafka_cluster_id(tmp_path / "kafka")
    assert len(first) == 22 and not first.startswith("-")
    assert cluster.kafka_cluster_id(tmp_path / "kafka") == first


# ---------------------------------------------------------------- Redis Cluster

def test_cluster_redis_node_sets_its_bus_port_explicitly() -> None:
    argv = redis_node_argv("redis-server", LAY, 6, Path("/d/redis6"), "everysec")
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert opts["--port"] == "26384"
    assert opts["--cluster-port"] == "27384"
    assert opts["--cluster-enabled"] == "yes"
    assert opts["--cluster-config-file"] == "nodes-26384.conf"
    assert opts["--cluster-node-timeout"] == "2000"
    assert opts["--appendonly"] == "yes"
    assert opts["--dir"] == "/d/redis6"


def test_cluster_redis_create_names_every_node_with_one_replica_each() -> None:
    argv = redis_create_argv("redis-cli", LAY, 1)
    assert argv[:3] == ["redis-cli", "--cluster", "create"]
    assert argv[3:9] == [f"127.0.0.1:{p}" for p in range(26379, 26385)]
    assert argv[9:] == ["--cluster-replicas", "1", "--cluster-yes"]


FRESH = "cluster_state:fail\r\ncluster_slots_assigned:0\r\ncluster_known_nodes:1\r\n"
FORMED = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:6\r\n"
FAILING = "cluster_state:fail\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:6\r\n"
GOSSIPING = "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_known_nodes:4\r\n"


def test_cluster_parse_cluster_info() -> None:
    assert parse_cluster_info(FORMED) == {"cluster_state": "ok", "cluster_slots_assigned": "16384",
                                          "cluster_known_nodes": "6"}
    assert parse_cluster_info("") == {}


@pytest.mark.parametrize(("answers", "plan"), [
    ([FRESH] * 6, "create"),
    ([FORMED] * 6, "ready"),
    ([FORMED] * 5 + [FAILING], "wait"),     # a failover in progress
    ([FORMED] * 5 + [GOSSIPING], "wait"),   # a node still learning its peers
    ([FORMED] * 5 + [FRESH], "wait"),       # a node that lost its nodes.conf: never created over a formed cluster
    ([FRESH] * 5 + [""], "wait"),           # a node not answering
])
def test_cluster_redis_plan(answers: list[str], plan: str) -> None:
    assert redis_plan([parse_cluster_info(a) for a in answers], 6) == plan


# ---------------------------------------------------------------- HAProxy and the app processes

def _sections(config: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = ""
    for line in config.splitlines():
        if line and not line.startswith(" "):
            current = line.strip()
            found[current] = []
        elif line.strip():
            found[current].append(line.strip())
    return found


def test_cluster_haproxy_balances_websockets_over_ready_gateways() -> None:
    sections = _sections(haproxy_config(LAY))
    for wanted in ("mode http", "timeout tunnel 1h", "retries 3", "option redispatch 1"):
        assert wanted in sections["defaults"]
    assert "bind 127.0.0.1:28000" in sections["frontend clients"]
    gateways = sections["backend gateways"]
    assert {"balance leastconn", "option httpchk GET /readyz", "http-check expect status 200"} <= set(gateways)
    assert [line for line in gateways if line.startswith("server ")] == [
        f"server gateway{i} 127.0.0.1:{p} check" for i, p in enumerate((28080, 28081, 28082), start=1)]


def test_cluster_haproxy_fronts_connect_and_serves_its_stats() -> None:
    sections = _sections(haproxy_config(LAY))
    assert "bind 127.0.0.1:28001" in sections["frontend connect"]
    assert [line for line in sections["backend connect_workers"] if line.startswith("server ")] == [
        "server connect1 127.0.0.1:28083 check", "server connect2 127.0.0.1:28084 check"]
    assert {"bind 127.0.0.1:28002", "stats uri /stats"} <= set(sections["frontend stats"])


STATS = """# pxname,svname,qcur,status,check_status,
clients,FRONTEND,,OPEN,,
gateways,gateway1,0,UP,L7OK,
gateways,gateway2,0,DOWN,L4CON,
gateways,gateway3,0,UP 1/2,L7STS,
gateways,BACKEND,0,UP,,
connect_workers,connect1,0,UP,L7OK,
"""


def test_cluster_haproxy_stats_name_the_servers_up() -> None:
    assert servers_up(STATS, "gateways") == {"gateway1"}  # going down (UP 1/2) is not up
    assert servers_up(STATS, "connect_workers") == {"connect1"}
    assert servers_up("", "gateways") == set()
    assert servers_up("<html>", "gateways") == set()


def test_cluster_apps_get_the_cluster_bootstrap_and_redis_url() -> None:
    s = cluster_settings()
    cdc1, cdc2 = cluster.cdc_proc(s, 1), cluster.cdc_proc(s, 2)
    gateway3, demo = cluster.gateway_proc(s, 3), cluster.demo_proc(s)
    for proc in (cdc1, cdc2, gateway3, demo):
        assert proc.env["FRESHWIRE_KAFKA_BOOTSTRAP"] == LAY.kafka_bootstrap
        assert proc.env["FRESHWIRE_REDIS_URL"] == LAY.redis_url
        assert proc.env["FRESHWIRE_CONNECT_URL"] == LAY.connect_proxy_url
    assert cdc1.env["FRESHWIRE_REDIS_BUCKETS"] == str(REDIS_BUCKETS) == "12"
    assert "FRESHWIRE_REDIS_BUCKETS" not in gateway3.env and "FRESHWIRE_REDIS_BUCKETS" not in demo.env
    assert (cdc1.env["FRESHWIRE_CDC_METRICS_PORT"], cdc2.env["FRESHWIRE_CDC_METRICS_PORT"]) == ("29108", "29109")
    assert (cdc1.port, cdc2.port, gateway3.port) == (29108, 29109, 28082)
    assert gateway3.argv[-2:] == ["--port", "28082"]
    assert demo.env["FRESHWIRE_DEMO_GATEWAY_WS"] == "ws://127.0.0.1:28000/ws"
    assert services.app_env(StackSettings())["FRESHWIRE_KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"  # single unchanged


# ---------------------------------------------------------------- the parts and their order

def test_cluster_parts_follow_the_order_in_groups_with_setup_after_the_last() -> None:
    found = cluster.parts(cluster_settings())
    assert [p.name for p in found] == [n for n in cluster.ORDER if n != "replica"]
    assert stack.order(cluster_settings()) == cluster.ORDER
    groups = stack.batches(found, lambda p: p.group)
    assert [[p.name for p in b] for b in groups][1:4] == [cluster.REDIS, cluster.KAFKA, cluster.CONNECT]
    setups = {p.name: p.after for p in found if p.after is not None}
    assert setups == {"postgres": services.postgres_setup, "redis6": cluster.form_redis_cluster,
                      "kafka3": cluster.create_topics, "connect2": cluster.register_connector,
                      "gateway3": cluster.wait_routed}
    assert {p.name for p in found if p.app} == {*cluster.CDC, *cluster.GATEWAY, "demo"}
    assert cluster.ORDER.index("haproxy") < cluster.ORDER.index("cdc1")  # cdc watches Connect through it
    assert "replica" in [p.name for p in cluster.parts(cluster_settings(replica=True))]


def test_cluster_single_stack_parts_stay_one_per_batch() -> None:
    single = stack.parts_for(StackSettings(), two_gateways=True)
    assert [p.name for p in single] == [n for n in stack.ORDER if n != "replica"]
    assert all(len(b) == 1 for b in stack.batches(single, lambda p: p.group))
    assert stack.order(StackSettings()) == stack.ORDER

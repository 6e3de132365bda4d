"""docker-compose.yml, read as data: no Docker needed. These catch the drift a `docker compose up`
would only reveal minutes in: a renamed file, a service that no longer exists, a port open to the
network, an image that moves under us, topics or connector config out of step with the native stack."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors import services

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
CONNECTOR_FILE = REPO / "connectors" / "freshwire-postgres.json"

EXPECTED_SERVICES = {"postgres", "redis", "kafka", "connect", "cdc", "gateway", "connector-init", "kafka-init"}
APP_SERVICES = ("cdc", "gateway", "connector-init")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return doc


@pytest.fixture(scope="module")
def svcs(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _command_text(service: dict[str, Any]) -> str:
    """Entrypoint and command as one string, whether written as lists or as strings."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return " ".join(parts)


def _depends_on(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, dict | list) else []


def _host_ip(port: str | int | dict[str, Any]) -> str | None:
    """The host address of a published port, in short ("ip:host:container") or long syntax."""
    if isinstance(port, dict):
        return port.get("host_ip")
    # Short syntax: [ip:][host:]container[/proto]; an IPv6 address comes bracketed.
    text = str(port).split("/")[0]
    if text.startswith("["):
        return text[1:text.index("]")]
    pieces = text.split(":")
    return pieces[0] if len(pieces) == 3 else None


def _host_paths(service: dict[str, Any]) -> list[str]:
    """Host paths a service mounts or builds from (named volumes are not host paths)."""
    paths: list[str] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                paths.append(volume["source"])
        elif str(volume).startswith((".", "/", "~")):
            paths.append(str(volume).split(":")[0])
    build = service.get("build")
    if isinstance(build, str):
        paths.append(build)
    elif isinstance(build, dict):
        context = build.get("context", ".")
        paths.append(context)
        paths.append(str(Path(context) / build.get("dockerfile", "Dockerfile")))
    env_files = service.get("env_file") or []
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        paths.append(env_file if isinstance(env_file, str) else env_file["path"])
    return paths


def test_compose_declares_every_expected_service(svcs: dict[str, dict[str, Any]]) -> None:
    missing = EXPECTED_SERVICES - set(svcs)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_compose_publishes_ports_on_loopback_only(svcs: dict[str, dict[str, Any]]) -> None:
    exposed = [(name, port) for name, svc in svcs.items() for port in svc.get("ports") or []
               if _host_ip(port) != "127.0.0.1"]
    assert not exposed, f"ports published beyond 127.0.0.1: {exposed}"
    assert not [n for n, s in svcs.items() if s.get("network_mode") == "host"], "host networking bypasses 127.0.0.1"


def test_compose_references_only_existing_host_files(compose: dict[str, Any],
                                                     svcs: dict[str, dict[str, Any]]) -> None:
    referenced = [(name, p) for name, svc in svcs.items() for p in _host_paths(svc)]
    for kind in ("configs", "secrets"):
        referenced += [(f"{kind}.{n}", c["file"]) for n, c in (compose.get(kind) or {}).items() if "file" in c]
    assert referenced, "expected at least the build context and demo/schema.sql"
    missing = [(name, p) for name, p in referenced if not (REPO / p).exists()]
    assert not missing, f"host paths that do not exist in the repo: {missing}"


def test_compose_mounts_the_demo_schema_into_postgres_init(svcs: dict[str, dict[str, Any]]) -> None:
    volumes = [str(v) for v in svcs["postgres"].get("volumes") or []]
    assert any(v.startswith("./demo/schema.sql:/docker-entrypoint-initdb.d/") for v in volumes), volumes
    # schema.sql connects to nothing itself: it must run inside the `app` database.
    assert svcs["postgres"]["environment"]["POSTGRES_DB"] == "app"
    flags = " ".join(svcs["postgres"]["command"])
    assert "wal_level=logical" in flags
    assert "shared_preload_libraries=pg_stat_statements" in flags


def test_compose_connector_init_registers_the_shared_connector_config(svcs: dict[str, dict[str, Any]]) -> None:
    command = _command_text(svcs["connector-init"])
    assert "connectors.register" in command
    # The hosts it is pointed at must be services of this file.
    assert re.search(r"--connect\s+http://connect:8083\b", command), command
    pg_host = re.search(r"--pg-host\s+(\S+)", command)
    assert pg_host and pg_host.group(1) in svcs, command
    assert "--rules /app/demo/rules.toml" in command  # the include lists follow the rules the consumer reads
    spec = json.loads(CONNECTOR_FILE.read_text())
    assert spec["config"]["plugin.name"] == "pgoutput"
    assert spec["config"]["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"


def test_compose_kafka_record_limit_matches_the_native_stack(svcs: dict[str, dict[str, Any]]) -> None:
    from connectors.services import MAX_BROKER_MESSAGE_BYTES

    env = svcs["kafka"]["environment"]
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == MAX_BROKER_MESSAGE_BYTES
    spec = json.loads(CONNECTOR_FILE.read_text())
    assert int(spec["config"]["producer.override.max.request.size"]) == MAX_BROKER_MESSAGE_BYTES


def test_compose_connector_publication_follows_the_rules(svcs: dict[str, dict[str, Any]]) -> None:
    # publication.autocreate.mode is disabled: connector-init creates the publication from the rules
    # (connectors/publication.py), and the schema never creates one FOR ALL TABLES.
    config = json.loads(CONNECTOR_FILE.read_text())["config"]
    schema = (REPO / "demo" / "schema.sql").read_text()
    assert config["publication.autocreate.mode"] == "disabled"
    assert "CREATE PUBLICATION" not in schema
    assert "--sync-publication" in _command_text(svcs["connector-init"])


def test_compose_depends_on_names_existing_services(svcs: dict[str, dict[str, Any]]) -> None:
    dangling = [(name, dep) for name, svc in svcs.items() for dep in _depends_on(svc) if dep not in svcs]
    assert not dangling, f"depends_on names unknown services: {dangling}"


def test_compose_pins_every_image_to_an_explicit_tag(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
        if "image" not in svc:
            continue
        image = str(svc["image"])
        last = image.rsplit("/", 1)[-1]    # a registry host:port must not pass for a tag
        assert ":" in last or "@sha256:" in image, f"{name}: {image} has no tag"
        assert not image.endswith(":latest"), f"{name}: {image} floats on latest"


def test_compose_kafka_init_creates_the_stack_topics(svcs: dict[str, dict[str, Any]]) -> None:
    command = _command_text(svcs["kafka-init"])
    assert "/opt/kafka/bin/kafka-topics.sh" in command
    for topic in (services.TOPIC_CHANGES, services.TOPIC_OPS, services.TOPIC_DLQ):
        assert topic in command, f"kafka-init does not create {topic}"
    assert "--partitions 1" in command


def test_compose_app_services_build_from_the_project_dockerfile(svcs: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        build = svcs[name].get("build")
        assert build is not None, f"{name} is not built from the project"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (REPO / context).resolve() == REPO and (REPO / dockerfile).is_file(), (name, build)


def test_compose_app_env_points_at_compose_services_and_image_files(svcs: dict[str, dict[str, Any]]) -> None:
    for name in ("cdc", "gateway"):
        env = svcs[name]["environment"]
        assert env["FRESHWIRE_KAFKA_BOOTSTRAP"].split(":")[0] in svcs
        redis_host = re.match(r"redis://([^:/]+)", env["FRESHWIRE_REDIS_URL"])
        assert redis_host and redis_host.group(1) in svcs, env["FRESHWIRE_REDIS_URL"]
        # Required, with no fallback: the published development secret would accept anyone's tokens.
        assert env["FRESHWIRE_JWT_SECRET"].startswith("${FRESHWIRE_JWT_SECRET:?"), env["FRESHWIRE_JWT_SECRET"]
        # The image copies the repo to /app, so the rules file must be a repo file.
        rules = env["FRESHWIRE_RULES"]
        assert rules.startswith("/app/") and (REPO / rules.removeprefix("/app/")).is_file(), rules


def test_compose_replica_stays_behind_its_profile(svcs: dict[str, dict[str, Any]]) -> None:
    replica = svcs.get("postgres-replica")
    if replica is None:
        pytest.skip("no postgres-replica service")
    assert replica.get("profiles") == ["replica"]
    assert "postgres" in _depends_on(replica)


def test_compose_loads_with_the_compose_specs_own_loader(tmp_path: Path) -> None:
    """compose-go (the Compose specification's reference loader, what `docker compose` runs) loads the
    file: schema, interpolation, normalization. Without FRESHWIRE_JWT_SECRET it refuses, with our
    message: a `docker compose up` without configuration never runs on the published dev secret."""
    import shutil
    import subprocess

    go = shutil.which("go") or "/usr/local/go/bin/go"
    source = REPO / "tests" / "compose_check"
    build = subprocess.run([go, "build", "-o", str(tmp_path / "compose_check"), "."], cwd=source,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRESHWIRE_")}
    loaded = subprocess.run([str(tmp_path / "compose_check"), str(REPO / "docker-compose.yml")],
                            env={**env, "FRESHWIRE_JWT_SECRET": "4b1d" * 16}, capture_output=True, text=True,
                            timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().endswith("services")
    refused = subprocess.run([str(tmp_path / "compose_check"), str(REPO / "docker-compose.yml")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "FRESHWIRE_JWT_SECRET" in refused.stderr and "secret of your own" in refused.stderr

"""Where every part of the native stack lives and listens, read once from FRESHWIRE_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

KAFKA_VERSION = "4.4.0"
DEBEZIUM_VERSION = "3.6.1.Final"
PG_MAJOR = "15"


class SettingError(ValueError):
    """A FRESHWIRE_* variable is missing or malformed; the message names it."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingError(f"{name} must be an integer, got {raw!r}") from None


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name} must be 1 or 0, got {raw!r}")


def _choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = os.environ.get(name) or default
    if raw not in allowed:
        raise SettingError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).resolve() if raw else default


@dataclass(frozen=True)
class StackSettings:
    state_dir: Path
    cache_dir: Path
    pg_port: int
    redis_port: int
    kafka_port: int
    kafka_controller_port: int
    connect_port: int
    gateway_port: int
    gateway2_port: int
    demo_port: int
    replica_port: int
    with_replica: bool        # start a streaming standby (FRESHWIRE_REPLICA=1)
    replica_delay_ms: int     # its recovery_min_apply_delay: real, controllable replica lag
    release_gating: bool      # the cdc consumer waits for the replica before releasing
    cdc_metrics_port: int
    pg_bin: Path
    host: str = "127.0.0.1"
    redis_fsync: str = "everysec"  # Redis appendfsync: everysec or always (docs/tuning.md)

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
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def connect_url(self) -> str:
        return f"http://{self.host}:{self.connect_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"


def load_stack_settings() -> StackSettings:
    state = _path("FRESHWIRE_STATE_DIR", REPO / ".state")
    return StackSettings(
        state_dir=state,
        cache_dir=_path("FRESHWIRE_CACHE_DIR", REPO / ".cache"),
        pg_port=_int("FRESHWIRE_PG_PORT", 15432),
        redis_port=_int("FRESHWIRE_REDIS_PORT", 16379),
        kafka_port=_int("FRESHWIRE_KAFKA_PORT", 19092),
        kafka_controller_port=_int("FRESHWIRE_KAFKA_CONTROLLER_PORT", 19093),
        connect_port=_int("FRESHWIRE_CONNECT_PORT", 18083),
        gateway_port=_int("FRESHWIRE_GATEWAY_PORT", 18080),
        gateway2_port=_int("FRESHWIRE_GATEWAY2_PORT", 18081),
        demo_port=_int("FRESHWIRE_DEMO_PORT", 18090),
        replica_port=_int("FRESHWIRE_REPLICA_PORT", 15433),
        with_replica=_flag("FRESHWIRE_REPLICA", False),
        replica_delay_ms=_int("FRESHWIRE_REPLICA_DELAY_MS", 0),
        release_gating=_flag("FRESHWIRE_RELEASE_GATING", True),
        cdc_metrics_port=_int("FRESHWIRE_CDC_METRICS_PORT", 19108),
        pg_bin=_path("FRESHWIRE_PG_BIN", Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")),
        redis_fsync=_choice("FRESHWIRE_REDIS_FSYNC", "everysec", ("everysec", "always")),
    )

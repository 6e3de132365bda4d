"""Where every part of the native stack lives and listens, read once from FRESHWIRE_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contract import envflags

REPO = Path(__file__).resolve().parent.parent

KAFKA_VERSION = "4.4.0"
DEBEZIUM_VERSION = "3.6.1.Final"
PG_MAJOR = "15"


class SettingError(ValueError):
    """A FRESHWIRE_* variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class StackSettings:
    """Each field is FRESHWIRE_<FIELD> (FRESHWIRE_REPLICA for `replica`), loaded by the one loader
    every process uses (cdc/envflags.py)."""

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
    found = envflags.values(StackSettings, "FRESHWIRE_", {}, SettingError)
    for name in ("state_dir", "cache_dir", "pg_bin"):
        if name in found:
            found[name] = Path(str(found[name])).resolve()
    return StackSettings(**found)  # type: ignore[arg-type]

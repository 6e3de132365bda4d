"""The sink's settings: FRESHWIRE_SINK_* environment variables, mirrored by command-line flags,
loaded once into a frozen object. A missing or malformed value fails at start with its name."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field

from contract import envflags, topics


class SettingsError(ValueError):
    """A FRESHWIRE_SINK_* setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    url: str = ""
    secret: str = field(default="", repr=False)
    bootstrap: str = "127.0.0.1:19092"
    topic: str = topics.OPS
    group: str = "freshwire-sink"
    dlq_topic: str = topics.SINK_DLQ
    max_attempts: int = 8
    backoff_min_ms: int = 500
    backoff_max_ms: int = 30_000
    timeout_ms: int = 10_000

    @property
    def max_record_ms(self) -> int:
        """The longest one record can take before it is delivered or dead-lettered."""
        return self.max_attempts * (self.timeout_ms + self.backoff_max_ms)


REQUIRED = ("url", "secret")

HELP = {
    "url": "where each batch is POSTed (required), e.g. https://app.example.com/api/freshwire",
    "secret": "shared HMAC-SHA256 secret (required; prefer the variable: flags show in `ps`)",
    "bootstrap": "Kafka bootstrap servers",
    "topic": "ops topic: one JSON record per released transaction",
    "group": "consumer group; a new group starts at the end of the topic",
    "dlq_topic": "dead-letter topic (created with 1 partition if missing)",
    "max_attempts": "POST attempts per batch before it is dead-lettered",
    "backoff_min_ms": "wait after the first failed attempt; doubles per attempt, with jitter",
    "backoff_max_ms": "longest wait between attempts",
    "timeout_ms": "timeout of one POST (connect, write, read)",
}


PREFIX = "FRESHWIRE_SINK_"


def _check(s: Settings) -> None:
    for name in REQUIRED:
        if not getattr(s, name):
            raise SettingsError(f"{envflags.env_name(PREFIX, name)} is required (or --{name})")
    if not s.url.startswith(("http://", "https://")):
        raise SettingsError(f"FRESHWIRE_SINK_URL must be an http:// or https:// URL, got {s.url!r}")
    if s.max_attempts < 1:
        raise SettingsError(f"FRESHWIRE_SINK_MAX_ATTEMPTS must be at least 1, got {s.max_attempts}")
    if s.backoff_min_ms < 1:
        raise SettingsError(f"FRESHWIRE_SINK_BACKOFF_MIN_MS must be at least 1, got {s.backoff_min_ms}")
    if s.backoff_max_ms < s.backoff_min_ms:
        raise SettingsError(f"FRESHWIRE_SINK_BACKOFF_MAX_MS ({s.backoff_max_ms}) is below "
                            f"FRESHWIRE_SINK_BACKOFF_MIN_MS ({s.backoff_min_ms})")
    if s.timeout_ms < 1:
        raise SettingsError(f"FRESHWIRE_SINK_TIMEOUT_MS must be at least 1, got {s.timeout_ms}")


def parser() -> argparse.ArgumentParser:
    return envflags.parser_for(
        Settings, PREFIX, HELP, "python -m clients.sink",
        "Freshwire's cache-purge sink: the ops topic in, one signed, idempotent POST per batch out.",
        hidden_defaults=REQUIRED)


def load_settings(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    settings = envflags.load(Settings, PREFIX, parser(), argv, SettingsError, environ)
    _check(settings)
    return settings

"""Named errors of the cdc package. Each carries a stable code used in DLQ headers and metrics."""

from __future__ import annotations


class DecodeError(ValueError):
    """A Kafka record that is not a Debezium event we understand; it goes to the dead-letter topic."""

    retriable = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RulesError(ValueError):
    """The invalidation rules file is invalid; the message names the table and template."""


class SettingsError(ValueError):
    """A FRESHWIRE_* setting is missing or malformed; the message names it."""

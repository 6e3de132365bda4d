"""The consumer's Kafka settings that the guarantees depend on."""

from __future__ import annotations

from cdc.consumer import consumer_config
from cdc.settings import Settings


def test_consumer_config_commits_only_by_hand_after_the_effects() -> None:
    config = consumer_config(Settings())
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False


def test_consumer_config_session_timeout_lets_a_restart_take_over_within_seconds() -> None:
    """Regression (chaos harness): with librdkafka's default 45 s session timeout, a consumer
    restarted after a crash waited 45 s for its own partition, holding every invalidation back."""
    config = consumer_config(Settings())
    assert int(config["session.timeout.ms"]) <= 10_000  # type: ignore[call-overload]
    assert int(config["heartbeat.interval.ms"]) * 3 <= int(config["session.timeout.ms"])  # type: ignore[call-overload]


def test_settings_literal_choices_are_checked_with_the_variable_name() -> None:
    """One loader (contract/envflags.py) for every process: a Literal setting refuses other values by name."""
    import pytest

    from cdc.errors import SettingsError
    from cdc.settings import load_settings

    assert load_settings(["--hold-policy", "hold"]).hold_policy == "hold"
    with pytest.raises(SettingsError, match="FRESHWIRE_HOLD_POLICY must be one of release, hold"):
        load_settings(["--hold-policy", "sometimes"])


def test_commit_interval_must_be_finite_and_not_negative() -> None:
    import pytest

    from cdc.errors import SettingsError
    from cdc.settings import load_settings

    assert load_settings(["--cdc-commit-interval-ms", "0"]).cdc_commit_interval_ms == 0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(SettingsError, match="FRESHWIRE_CDC_COMMIT_INTERVAL_MS must be a finite number"):
            load_settings(["--cdc-commit-interval-ms", bad])

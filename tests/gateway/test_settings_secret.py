"""The published development secret is refused outside development mode (issue #18)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connectors.stack_settings import REPO
from gateway.errors import SettingsError
from gateway.settings import DEV_SECRET, load_gateway_settings


def test_settings_refuse_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", DEV_SECRET)
    monkeypatch.delenv("FRESHWIRE_DEV_MODE", raising=False)
    with pytest.raises(SettingsError, match="published development secret"):
        load_gateway_settings()


def test_settings_accept_the_development_secret_in_development_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", DEV_SECRET)
    monkeypatch.setenv("FRESHWIRE_DEV_MODE", "1")
    assert load_gateway_settings().dev_mode


def test_settings_accept_a_secret_of_ones_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", "4b1d" * 16)
    monkeypatch.delenv("FRESHWIRE_DEV_MODE", raising=False)
    assert not load_gateway_settings().dev_mode


def test_settings_malformed_bool_fails_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", "4b1d" * 16)
    monkeypatch.setenv("FRESHWIRE_DEV_MODE", "maybe")
    with pytest.raises(SettingsError, match="FRESHWIRE_DEV_MODE"):
        load_gateway_settings()


def test_settings_gateway_process_exits_2_on_the_development_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "FRESHWIRE_JWT_SECRET": DEV_SECRET, "FRESHWIRE_REDIS_URL": "memory://"}
    out = subprocess.run([sys.executable, "-m", "gateway", "--port", "1"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "published development secret" in out.stderr


def test_settings_mint_works_against_the_dev_stack_without_configuration() -> None:
    """Newcomer friction (#11): `python -m gateway.mint --sub alice --keys …`, as docs/protocol.md shows
    it, prints a token the dev stack's gateways accept, and says which secret it used."""
    from gateway.auth import Verifier
    from gateway.settings import GatewaySettings

    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "gateway.mint", "--sub", "alice", "--keys", "card:*"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "development secret" in out.stderr
    grant = Verifier(GatewaySettings(jwt_secret=DEV_SECRET, dev_mode=True)).verify(out.stdout.strip())
    assert grant.subject == "alice" and grant.allows("card:7") and not grant.allows("board:1")

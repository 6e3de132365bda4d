"""The hub's fan-out bookkeeping, pure: what /metrics reads."""

from __future__ import annotations

from prometheus_client import generate_latest

from contract.redis_layout import Published
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.session import Session


def _event(version: str, *keys: str) -> Published:
    return Published(version, keys, (), 0, version)


def test_hub_counts_coalescing_including_closed_connections() -> None:
    hub = Hub()
    session = Session("c1")
    hub.register(session)
    hub.add(session, session.begin_subscribe(["a"]))
    session.finish_subscribe(None, {"a": None}, {}, None)
    session.take()
    hub.deliver(_event("0000000000000001", "a"))
    hub.deliver(_event("0000000000000002", "a"))  # not read yet: replaces the pending one
    assert hub.deliveries == 2 and hub.coalesced == 1
    hub.drop(session)
    assert hub.coalesced == 1 and not hub.sessions and hub.subscriptions == 0


def test_hub_metrics_read_from_the_hub_at_scrape() -> None:
    hub = Hub()
    metrics = GatewayMetrics(hub)
    session = Session("c1")
    hub.register(session)
    hub.add(session, session.begin_subscribe(["a", "b"]))
    session.finish_subscribe(None, {"a": None, "b": None}, {}, None)
    hub.deliver(_event("0000000000000001", "a"))
    hub.deliver(_event("0000000000000002", "a"))
    text = generate_latest(metrics.registry).decode()
    assert "freshwire_gateway_connections 1.0" in text
    assert "freshwire_gateway_subscriptions 2.0" in text
    assert "freshwire_gateway_coalesced_total 1.0" in text
    assert "freshwire_gateway_deliveries_total 2.0" in text


def test_pump_watermark_only_moves_forward() -> None:
    from gateway.pump import Watermark

    watermark = Watermark()
    assert watermark.advance("0000000000000002")
    moved = watermark.moved_at
    assert not watermark.advance("0000000000000001")
    assert not watermark.advance(None)
    assert watermark.value == "0000000000000002" and watermark.moved_at == moved

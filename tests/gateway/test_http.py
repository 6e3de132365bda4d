"""The gateway's HTTP endpoints: /v1/versions, /healthz, /readyz, /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from gw_support import Gateway, recv, token, ver
from test_protocol_ws import FailingBackend

from gateway import errors as E


def _versions(gw: Gateway, keys: str, patterns: list[str] | None = None, header: bool = False,
              tok: str | None = None) -> tuple[int, dict[str, Any]]:
    tok = token(patterns or ["*"]) if tok is None else tok
    if header:
        r = gw.client.get("/v1/versions", params={"keys": keys}, headers={"Authorization": f"Bearer {tok}"})
    else:
        r = gw.client.get("/v1/versions", params={"keys": keys, "token": tok})
    return r.status_code, r.json()


def test_versions_returns_versions_and_watermark(gw: Gateway) -> None:
    gw.release(ver(3), ["a"])
    gw.release(ver(4), prefixes=["card:"])
    assert _versions(gw, "a,b,card:9") == (200, {"versions": {"a": ver(3), "b": None, "card:9": ver(4)},
                                                 "watermark": ver(4)})


def test_versions_accepts_bearer_header(gw: Gateway) -> None:
    assert _versions(gw, "a", header=True) == (200, {"versions": {"a": None}, "watermark": None})


def test_versions_duplicate_keys_answered_once(gw: Gateway) -> None:
    status, body = _versions(gw, "a,a,,b")
    assert status == 200
    assert body["versions"] == {"a": None, "b": None}


@pytest.mark.parametrize("tok", ["", "garbage", token(ttl_s=-5)])
def test_versions_bad_token_401(gw: Gateway, tok: str) -> None:
    status, body = _versions(gw, "a", tok=tok)
    assert status == 401
    assert body["error"]["code"] == "auth_failed"


def test_versions_forbidden_403_lists_keys(gw: Gateway) -> None:
    status, body = _versions(gw, "tenant:1:a,tenant:10:a", patterns=["tenant:1:*"])
    assert status == 403
    assert body["error"] == {"code": E.FORBIDDEN, "message": "the token does not cover these keys",
                             "keys": ["tenant:10:a"]}


def test_versions_invalid_key_400(gw: Gateway) -> None:
    status, body = _versions(gw, "ok,not*ok")
    assert status == 400
    assert body["error"]["code"] == E.INVALID_KEY
    assert body["error"]["keys"] == ["not*ok"]


def test_versions_key_with_trailing_newline_400(gw: Gateway) -> None:
    status, body = _versions(gw, "a\n")
    assert status == 400
    assert body["error"]["code"] == E.INVALID_KEY


@pytest.mark.parametrize("keys", ["", ","])
def test_versions_no_keys_400_bad_request(gw: Gateway, keys: str) -> None:
    status, body = _versions(gw, keys)
    assert status == 400
    assert body["error"]["code"] == E.BAD_REQUEST


def test_versions_too_many_keys_400(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_subscriptions=2)
    assert _versions(gw, "a,b")[0] == 200
    status, body = _versions(gw, "a,b,c")
    assert status == 400
    assert body["error"]["code"] == E.TOO_MANY_KEYS


def test_versions_backend_down_503_unavailable(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(backend=FailingBackend())
    status, body = _versions(gw, "a")
    assert status == 503
    assert body["error"]["code"] == E.UNAVAILABLE


def test_healthz_ok(gw: Gateway) -> None:
    r = gw.client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_readyz_200_when_ready(gw: Gateway) -> None:
    gw.release(ver(9), ["a"])
    gw.wait(lambda: gw.state.pump.watermark.value == ver(9))
    r = gw.client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body.pop("watermark_age_s") < 5
    assert body == {"status": "ready", "backend": "ok", "auth": "ok", "pump": "running", "stream": "moving",
                    "watermark": ver(9), "connections": 0}


def test_readyz_503_when_the_stream_stalls(gw: Gateway) -> None:
    """A watermark that stopped moving (Debezium heartbeats move it every second) fails readiness."""
    gw.state.pump.watermark.moved_at -= 3600
    r = gw.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["stream"].startswith("watermark still for")


def test_readyz_503_when_backend_unhealthy(gw: Gateway) -> None:
    gw.backend.healthy = False
    r = gw.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "not ready"
    assert r.json()["backend"] == "unreachable"


def test_metrics_exposes_gateway_series(gw: Gateway) -> None:
    with gw.connect() as ws:
        gw.subscribe(ws, ["a", "b"])
        ws.send_text("{nope")
        assert recv(ws)["code"] == E.BAD_JSON
        gw.release(ver(1), ["a"])
        gw.invalidations_until(ws, "a", ver(1))
        r = gw.client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.text
        for line in ("freshwire_gateway_connections 1.0", "freshwire_gateway_subscriptions 2.0",
                     "freshwire_gateway_deliveries_total 1.0", 'freshwire_gateway_errors_total{code="bad_json"} 1.0'):
            assert line in text, line
        for name in ("freshwire_gateway_coalesced_total", "freshwire_gateway_queue_depth",
                     "freshwire_gateway_closes_total", "freshwire_gateway_commit_to_send_seconds",
                     "freshwire_gateway_resyncs_total"):
            assert name in text, name
    gw.wait(lambda: not gw.state.hub.sessions)
    assert "freshwire_gateway_connections 0.0" in gw.client.get("/metrics").text


def test_metrics_counts_each_server_close_once(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(max_connections=1)
    with gw.connect(tok=token(ttl_s=1)) as ws:
        assert gw.ping(ws) == []
        with pytest.raises(Exception):  # noqa: B017 - WebSocketDisconnect, checked in test_protocol_ws
            recv(ws, timeout_s=3)
    gw.wait(lambda: not gw.state.hub.sessions)
    assert 'freshwire_gateway_closes_total{code="4001"} 1.0' in gw.client.get("/metrics").text


def test_versions_accepts_every_valid_key(gw: Gateway) -> None:
    """Review bug 9: keys with `+`, `=`, `/`, `@` and encoded values (`José Ñ,x*` as the consumer renders
    it) are read by /v1/versions as they are, whether sent raw or percent-encoded."""
    from urllib.parse import quote

    from contract.keys import encode_value

    keys = ["a+b", "x=y", "p/q@r", f"probe_text:{encode_value('José Ñ,x*')}"]
    gw.release(ver(4), keys)
    headers = {"Authorization": f"Bearer {token()}"}
    for query in (",".join(keys), quote(",".join(keys), safe="")):
        r = gw.client.get(f"/v1/versions?keys={query}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["versions"] == dict.fromkeys(keys, ver(4))

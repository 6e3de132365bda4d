"""The gauges of short-lived state (bench/soak.py watches them return to their baseline): keys with a
subscriber, awaits pending and the tokens they wait for, the event loop's tasks."""

from __future__ import annotations

import re

from gw_support import Gateway, recv, ver

from gateway.metrics import running_tasks


def _gauge(gw: Gateway, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", gw.client.get("/metrics").text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_subscribed_keys_and_awaits_rise_and_return_to_zero(gw: Gateway) -> None:
    tasks_before = _gauge(gw, "freshwire_gateway_tasks")
    assert tasks_before >= 1  # the pump at least
    with gw.connect() as ws:
        gw.subscribe(ws, ["a", "b"])
        with gw.connect() as other:
            gw.subscribe(other, ["b", "c"])
            assert _gauge(gw, "freshwire_gateway_subscribed_keys") == 3
            ws.send_json({"op": "await", "id": 7, "token": "fw1:900", "timeout_ms": 5000})
            other.send_json({"op": "await", "id": 8, "token": "fw1:900", "timeout_ms": 5000})
            gw.wait(lambda: gw.state.awaits.pending == 2)
            assert _gauge(gw, "freshwire_gateway_awaits_pending") == 2
            assert _gauge(gw, "freshwire_gateway_await_tokens") == 1
            assert _gauge(gw, "freshwire_gateway_tasks") > tasks_before  # the connections' own tasks
        gw.wait(lambda: gw.state.awaits.pending == 1)  # the closed connection's await was dropped
        gw.release(ver(5), ["a"], tx_id="900")
        frames = []
        while (msg := recv(ws))["type"] != "visible":
            frames.append(msg)
        assert msg["id"] == 7
    gw.wait(lambda: not gw.state.hub.sessions)
    for name in ("freshwire_gateway_subscribed_keys", "freshwire_gateway_awaits_pending",
                 "freshwire_gateway_await_tokens", "freshwire_gateway_connections"):
        assert _gauge(gw, name) == 0, name
    gw.wait(lambda: _gauge(gw, "freshwire_gateway_tasks") == tasks_before)


def test_running_tasks_is_zero_outside_an_event_loop() -> None:
    assert running_tasks() == 0

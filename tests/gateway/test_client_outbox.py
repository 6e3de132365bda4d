"""gateway.client.Outbox, the Python client's sans-I/O scheduler of subscribe/unsubscribe frames (the
same logic as Outbox in clients/js/freshwire.js), and the client reconnect policy: time is passed in,
the gateway is played by the test."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.client import (
    Frame,
    Other,
    Outbox,
    Refusal,
    Settled,
    Wait,
    attempt_after_close,
    backoff_delay,
)


class Rig:
    """An outbox at time 0 with jitter at its top (rand() = 1)."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("rand", lambda: 1.0)
        self.box: Outbox[str, str] = Outbox(**options)
        self.now = 0.0
        self.rid = 1
        self.wait: float | None = None

    def drain(self, others_only: bool = False) -> list[Frame | Other[str]]:
        out: list[Frame | Other[str]] = []
        while True:
            step = self.box.next(self.now, self.rid, others_only)
            if step is None or isinstance(step, Wait):
                self.wait = None if step is None else step.seconds
                return out
            if isinstance(step, Frame):
                self.rid += 1
            out.append(step)

    def one(self) -> Frame:
        steps = self.drain()
        assert len(steps) == 1, steps
        assert isinstance(steps[0], Frame)
        return steps[0]

    def subscribed(self, frame: Frame, versions: dict[str, str | None] | None = None) -> bool:
        versions = dict.fromkeys(frame.keys) if versions is None else versions
        return self.box.on_reply({"type": "subscribed", "id": frame.id, "versions": versions}, self.now)

    def unsubscribed(self, frame: Frame) -> bool:
        return self.box.on_reply({"type": "unsubscribed", "id": frame.id, "keys": list(frame.keys)}, self.now)

    def error(self, frame: Frame, code: str, keys: list[str] | None = None) -> bool:
        msg: dict[str, Any] = {"type": "error", "id": frame.id, "code": code, "message": code}
        if keys is not None:
            msg["keys"] = keys
        return self.box.on_reply(msg, self.now)

    def settled(self) -> list[tuple[str, str | None, tuple[str, ...]]]:
        """(ticket, refusal code, refused keys) of every ticket settled since the last call."""
        return [(e.ticket, e.refusal.code if e.refusal else None, e.refusal.keys if e.refusal else ())
                for e in self.box.take() if isinstance(e, Settled)]


def test_client_outbox_merges_calls_and_cancels_out() -> None:
    r = Rig()
    r.box.want(["a"])
    r.box.want(["b", "a"])
    r.box.want(["flip"])
    r.box.unwant(["flip"])
    frame = r.one()
    assert frame == Frame("subscribe", 1, ("a", "b"))
    assert r.wait == 10.0, "then it waits for the reply, at most reply_timeout_s"
    r.subscribed(frame)
    assert r.drain() == [] and r.wait is None
    r.box.unwant(["a"])
    r.box.want(["a"])
    assert r.drain() == [], "unwanted and wanted again before a frame: stays live"


def test_client_outbox_chunks_frames_and_sends_unsubscribes_first() -> None:
    r = Rig(keys_per_frame=3, frame_bytes=64 + 2 * (2 * 5 + 30))
    r.box.want(["k:001", "k:002", "k:003"])
    first = r.one()
    assert first.keys == ("k:001", "k:002")
    r.subscribed(first)
    r.box.want(["k:004"])
    r.box.unwant(["k:001"])
    second = r.one()
    assert (second.op, second.keys) == ("unsubscribe", ("k:001",))
    r.unsubscribed(second)
    assert r.one().keys == ("k:003", "k:004")


def test_client_outbox_tickets_settle_when_live_refused_or_given_up() -> None:
    r = Rig()
    r.box.want(["a", "b"], "T1")
    r.box.want(["b"], "T2")
    frame = r.one()
    r.error(frame, "forbidden", ["b"])
    events = r.box.take()
    assert events[0] == Refusal("forbidden", "forbidden", ("b",),
                                {"type": "error", "id": 1, "code": "forbidden", "message": "forbidden", "keys": ["b"]})
    assert isinstance(events[1], Settled) and events[1].ticket == "T2"
    assert events[1].refusal is not None and events[1].refusal.keys == ("b",)
    r.subscribed(frame, {"a": None})
    assert r.settled() == [("T1", "forbidden", ("b",))]
    r.box.want(["a"], "T3")
    assert r.settled() == [("T3", None, ())], "already live: at once"
    r.box.want(["c"], "T4")
    r.box.unwant(["c"])
    assert r.settled() == [("T4", None, ())], "given up before it was sent"
    assert r.drain() == []


def test_client_outbox_unsubscribe_tickets_settle_on_confirmation_or_reset() -> None:
    r = Rig()
    r.box.want(["a", "b"])
    r.subscribed(r.one())
    r.box.unwant(["a"], "U1")
    r.box.unwant(["b"], "U2")
    frame = r.one()
    assert r.settled() == []
    r.unsubscribed(frame)
    assert [t for t, _c, _k in r.settled()] == ["U1", "U2"]
    r.box.want(["c"])
    r.subscribed(r.one())
    r.box.unwant(["c"], "U3")
    r.box.reset(r.now)
    assert r.settled() == [("U3", None, ())]


def test_client_outbox_paces_every_frame() -> None:
    r = Rig(rate=40.0, burst=40)
    for i in range(100):
        r.box.enqueue(f"await-{i}")
    assert len(r.drain()) == 40
    assert r.wait == pytest.approx(0.026)
    r.now = 0.026
    assert [s.item for s in r.drain() if isinstance(s, Other)] == ["await-40"]
    r.now = 1.026
    assert len(r.drain()) == 40, "40 more a second later"
    r.box.want(["a"])
    r.now = 1.076
    assert [type(s).__name__ for s in r.drain()] == ["Frame", "Other"], "subscribes first"
    fresh = Rig()
    fresh.box.want(["b"])
    fresh.box.enqueue("await-x")
    assert fresh.drain(others_only=True) == [Other("await-x")], "others_only: the subscribe waits for the tick"


def test_client_outbox_resends_after_rate_limited_with_growing_back_off() -> None:
    r = Rig()
    r.box.want(["a", "b"], "T")
    first = r.one()
    r.box.on_rate_limited(r.now)
    assert r.drain() == [] and r.wait == 0.25
    r.now = 0.25
    r.box.want(["c"])
    again = r.one()
    assert again.keys == ("a", "b", "c"), "what is still needed, with what came meanwhile"
    r.box.on_rate_limited(r.now)
    r.drain()
    assert r.wait == 0.5
    r.now = 0.75
    r.subscribed(r.one())
    assert r.settled() == [("T", None, ())]
    r.box.want(["d"])
    r.one()
    r.box.on_rate_limited(r.now)
    r.drain()
    assert r.wait == 0.25, "a reply in between resets the strikes"
    assert r.subscribed(first), "a late reply of a dropped frame is still ours"


def test_client_outbox_applies_late_replies_of_frames_taken_as_lost() -> None:
    r = Rig(reply_timeout_s=0.1)
    r.box.want(["a"])
    first = r.one()
    r.now = 0.1
    second = r.one()
    assert second.keys == ("a",) and second.id != first.id
    r.box.unwant(["a"])
    r.subscribed(first)
    r.subscribed(second)
    third = r.one()
    assert (third.op, third.keys) == ("unsubscribe", ("a",)), "the gateway does hold `a`"
    r.unsubscribed(third)
    assert r.drain() == []


def test_client_outbox_retries_unavailable_without_holding_other_requests() -> None:
    r = Rig(min_backoff_s=0.1, max_backoff_s=1.0)
    r.box.want(["a"], "T")
    r.error(r.one(), "unavailable")
    r.box.enqueue("await")
    assert r.drain() == [Other("await")]
    assert r.wait == pytest.approx(0.2)
    r.now = 0.2
    retry = r.one()
    r.error(retry, "unavailable")
    r.drain()
    assert r.wait is not None and r.wait == pytest.approx(0.4)
    r.now += r.wait
    r.subscribed(r.one())
    assert r.settled() == [("T", None, ())]


def test_client_outbox_forbidden_for_all_keys_ends_the_frame_and_unlisted_keys_are_refused() -> None:
    r = Rig()
    r.box.want(["x", "y"], "T1")
    r.error(r.one(), "forbidden", ["x", "y"])
    assert r.settled() == [("T1", "forbidden", ("x", "y"))]
    r.box.want(["ok", "x", "z"], "T2")
    frame = r.one()
    r.error(frame, "forbidden", ["x"])                     # the list stops at 100 keys: z is not named
    r.subscribed(frame, {"ok": None})
    assert r.settled() == [("T2", "forbidden", ("x", "z"))]
    r.box.want(["z"])
    assert r.one().keys == ("z",), "asked again: sent again"


def test_client_outbox_refuses_keys_past_max_keys_first_asked_first_served() -> None:
    r = Rig(max_keys=3)
    r.box.want(["a", "b"], "T1")
    r.box.want(["c", "d", "e"], "T2")
    frame = r.one()
    assert frame.keys == ("a", "b", "c")
    r.subscribed(frame)
    assert r.drain() == []
    events = r.box.take()
    assert [e for e in events if isinstance(e, Refusal)] == [
        Refusal("too_many_keys", "at most 3 keys per connection", ("d", "e"))]
    assert [(e.ticket, e.refusal) for e in events if isinstance(e, Settled)] == [
        ("T1", None), ("T2", Refusal("too_many_keys", "at most 3 keys per connection", ("d", "e")))]
    r.box.unwant(["a"])
    r.box.want(["d"], "T3")
    r.unsubscribed(r.one())
    r.subscribed(r.one())
    assert r.settled() == [("T3", None, ())]


def test_client_outbox_whole_frame_refusals() -> None:
    r = Rig()
    r.box.want(["a", "b"], "T1")
    r.error(r.one(), "too_many_keys")
    assert r.settled() == [("T1", "too_many_keys", ("a", "b"))]
    r.box.want(["c", "bad", "d"], "T2")
    r.error(r.one(), "invalid_key", ["bad"])
    again = r.one()
    assert again.keys == ("c", "d"), "invalid_key names the offenders: only they end"
    r.subscribed(again)
    assert r.settled() == [("T2", "invalid_key", ("bad",))]


def test_client_outbox_reset_resends_every_wanted_key_and_keeps_tickets() -> None:
    r = Rig()
    r.box.want(["a", "b"])
    r.subscribed(r.one())
    r.box.want(["c"], "T")
    lost = r.one()
    r.box.reset(r.now)
    resume = r.one()
    assert resume.keys == ("a", "b", "c")
    assert not r.subscribed(lost, {"c": None}), "the old socket's frames are forgotten"
    r.subscribed(resume)
    assert r.settled() == [("T", None, ())]


def test_client_outbox_fail_all_settles_tickets_and_returns_unsent_requests() -> None:
    r = Rig()
    r.box.want(["a"], "T")
    r.box.enqueue("await")
    assert r.box.fail_all("closed", "the client is closed") == ["await"]
    assert r.settled() == [("T", "closed", ("a",))]


@pytest.mark.parametrize("attempt, uptime_s, code, after", [
    (5, 29.9, 1006, 5),    # a short-lived connection keeps the back-off growing
    (5, 0.1, 4013, 5),
    (5, 0.1, 4008, 5),
    (5, 0.1, 4001, 5),
    (5, 30.0, 1006, 0),    # up 30 s: reset
    (5, 0.1, 1012, 0),     # the gateway restarts: reconnect at once (jittered)
    (5, 0.1, 1001, 0),
])
def test_client_reconnect_policy_attempts(attempt: int, uptime_s: float, code: int, after: int) -> None:
    assert attempt_after_close(attempt, uptime_s, code) == after


def test_client_reconnect_policy_delay_is_full_jitter_capped() -> None:
    assert backoff_delay(0, 0.1, 10.0, lambda: 1.0) == pytest.approx(0.1)
    assert backoff_delay(3, 0.1, 10.0, lambda: 0.5) == pytest.approx(0.4)
    assert backoff_delay(20, 0.1, 10.0, lambda: 1.0) == 10.0
    assert backoff_delay(4, 0.1, 10.0, lambda: 0.0) == 0.0


@dataclass
class ModelGateway:
    """The gateway's side as gateway/ws.py does it: frames read in order through a token bucket
    (rate, bursts of twice that) that drops frames with `rate_limited`; replies in order."""
    rate: float = 50.0
    extra_drops: list[bool] = field(default_factory=list)   # frames dropped on top (a stricter gateway)
    known: set[str] = field(default_factory=set)
    tokens: float = 100.0
    stamp: float = 0.0
    strikes: int = 0
    max_strikes: int = 0
    dropped: int = 0

    def read(self, frame: Frame, now: float) -> dict[str, Any]:
        self.tokens = min(2 * self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        extra = self.extra_drops.pop() if self.extra_drops else False
        if self.tokens < 1 or extra:
            self.strikes += 1
            self.max_strikes = max(self.max_strikes, self.strikes)
            self.dropped += 1
            return {"type": "error", "code": "rate_limited", "message": "slow down"}
        self.tokens -= 1
        self.strikes = 0
        if frame.op == "unsubscribe":
            self.known.difference_update(frame.keys)
            return {"type": "unsubscribed", "id": frame.id, "keys": list(frame.keys)}
        self.known.update(frame.keys)
        return {"type": "subscribed", "id": frame.id, "versions": dict.fromkeys(frame.keys)}


KEYS = [f"k:{i}" for i in range(40)]
calls = st.lists(st.tuples(st.sampled_from(KEYS), st.booleans(), st.sampled_from([0.0, 0.0, 0.001, 0.005, 0.02])),
                 max_size=300)


@settings(max_examples=60, deadline=None)
@given(calls=calls, latency=st.sampled_from([0.0005, 0.002, 0.03]),
       drops=st.lists(st.booleans(), max_size=200))
def test_client_outbox_converges_on_a_model_gateway(calls: list[tuple[str, bool, float]], latency: float,
                                                    drops: list[bool]) -> None:
    """Any sequence of want/unwant calls, spread or bunched, against the gateway's token bucket (and
    extra drops): the gateway ends with exactly the wanted keys, every ticket settles, nothing is
    refused, and without extra drops no frame is ever rate limited."""
    box: Outbox[int, str] = Outbox(rand=lambda: 0.5, reply_timeout_s=1.0)
    gw = ModelGateway(extra_drops=list(drops))
    times = list(itertools.accumulate(gap for _key, _want, gap in calls))   # when each call is made
    wire: deque[tuple[float, Frame]] = deque()               # (arrival, frame), in order
    back: deque[tuple[float, dict[str, Any]]] = deque()      # (arrival, reply), in order
    wanted: set[str] = set()
    tickets: set[int] = set()
    now, rid, done = 0.0, 1, 0

    def settle() -> None:
        for event in box.take():
            assert not isinstance(event, Refusal), event
            tickets.discard(event.ticket)

    for _round in range(100_000):
        while done < len(calls) and times[done] <= now:       # the application's calls due now
            key, want, _gap = calls[done]
            done += 1
            if want:
                tickets.add(done)
                box.want([key], done)
                wanted.add(key)
            else:
                box.unwant([key])
                wanted.discard(key)
        step = box.next(now, rid)
        while isinstance(step, Frame):                        # the client sends what it may
            rid += 1
            wire.append((now + latency, step))
            step = box.next(now, rid)
        settle()
        upcoming = [t for t in (times[done] if done < len(calls) else None,
                                wire[0][0] if wire else None, back[0][0] if back else None,
                                now + step.seconds if isinstance(step, Wait) else None) if t is not None]
        if not upcoming:
            break
        now = max(now, min(upcoming))
        while wire and wire[0][0] <= now:                     # the gateway reads in order
            at, frame = wire.popleft()
            back.append((at + latency, gw.read(frame, at)))
        while back and back[0][0] <= now:                     # replies come back in order
            _at, msg = back.popleft()
            if msg.get("code") == "rate_limited":
                box.on_rate_limited(now)
            else:
                box.on_reply(msg, now)
        settle()
    else:
        pytest.fail("the outbox never went idle")
    assert gw.known == wanted
    assert not tickets and box.waiting == {}, "every ticket settled"
    assert gw.max_strikes < 20, "never closed with 4008"
    if not any(drops):
        assert gw.dropped == 0, "under the documented limit"

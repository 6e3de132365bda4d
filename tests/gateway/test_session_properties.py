"""Properties of the pure delivery core (gateway.session): any interleaving of subscribe (with a slow
version read), release, take and unsubscribe, with the client reading as slowly as it likes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gw_support import ver
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import protocol
from gateway.session import ControlOverflow, Session, TokenBucket

KEYS = ["a", "b", "c", "d", "card:1"]

op = st.one_of(
    st.tuples(st.just("sub"), st.lists(st.sampled_from(KEYS), min_size=0, max_size=4),
              st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), st.integers(-2, 1)), max_size=3)),
    st.tuples(st.just("read")),
    st.tuples(st.just("finish")),
    st.tuples(st.just("release"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), st.integers(1, 3)),
    # The version store runs ahead of the event stream: Redis holds a release whose pub/sub message
    # has not reached the gateway yet ("ahead"), which is delivered later ("deliver").
    st.tuples(st.just("ahead"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), st.integers(1, 3)),
    st.tuples(st.just("deliver")),
    st.tuples(st.just("stale"), st.sampled_from(KEYS)),
    st.tuples(st.just("take")),
    st.tuples(st.just("unsub"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3)),
)


class Model:
    """The version store, the client's view, and the checks on every frame the client reads."""

    def __init__(self) -> None:
        self.session = Session("t", control_limit=10_000)
        self.version = 0
        self.store: dict[str, str] = {}
        self.subscribed: set[str] = set()          # keys whose `subscribed` reply the client has read
        self.view: dict[str, str | None] = {}      # newest version the client was told, per subscribed key
        self.last_inv: dict[str, str] = {}         # newest invalidate per key, this subscription
        self.taken: set[tuple[str, str]] = set()   # (key, version) invalidated, this subscription
        self.flight: dict[str, Any] | None = None  # a subscribe between begin and finish
        self.replies: list[dict[str, Any]] = []    # subscribe replies not read yet
        self.stream: list[tuple[list[str], str]] = []  # released in the store, not yet offered to the session
        self.repeat: set[str] = set()              # keys whose reply may be followed by the same version once
        self.rid = 0

    def check_invariants(self) -> None:
        s = self.session
        assert len(s.pending) <= len(s.known)
        assert set(s.pending) <= set(s.known)
        for key, version in s.pending.items():
            assert s.known[key] == version

    def apply(self, operation: tuple[Any, ...]) -> None:
        kind = operation[0]
        s = self.session
        if kind == "sub" and self.flight is None:
            _, keys, since_delta = operation
            since: dict[str, str | None] = {}
            for key, delta in since_delta.items():
                if key in self.subscribed or key in s.known:
                    continue  # resuming means subscribing afresh (a new connection, or after unsubscribe)
                base = int(self.store.get(key, ver(0)), 16)
                since[key] = None if delta is None else ver(max(0, base + delta))
            keys = list(dict.fromkeys([*keys, *since]))
            self.rid += 1
            new = s.begin_subscribe(keys)
            self.flight = {"rid": self.rid, "keys": keys, "since": since, "new": new, "snapshot": None}
        elif kind == "read" and self.flight is not None and self.flight["snapshot"] is None:
            self.flight["snapshot"] = {k: self.store.get(k) for k in self.flight["keys"]}
        elif kind == "finish" and self.flight is not None and self.flight["snapshot"] is not None:
            f, self.flight = self.flight, None
            s.finish_subscribe(f["rid"], f["snapshot"], f["since"], max(self.store.values(), default=None))
            self.replies.append(f)
        elif kind == "release" and not self.stream:
            _, keys, bump = operation
            self.version += bump
            for key in keys:
                self.store[key] = ver(self.version)
                s.offer(key, ver(self.version), commit_ms=self.version)
        elif kind == "ahead":
            _, keys, bump = operation
            self.version += bump
            for key in keys:
                self.store[key] = ver(self.version)
            self.stream.append((keys, ver(self.version)))
        elif kind == "deliver" and self.stream:
            keys, version = self.stream.pop(0)
            for key in keys:
                s.offer(key, version, commit_ms=int(version, 16))
        elif kind == "stale" and operation[1] in self.store:
            # a re-offer of the current version (as after a resync): news only if not yet known
            key, version = operation[1], self.store[operation[1]]
            known = s.known.get(key)
            assert s.offer(key, version) == (key in s.known and (known is None or version > known))
            assert not s.offer(key, version)
        elif kind == "take":
            self.read_frames(s.take())
        elif kind == "unsub" and self.flight is None:
            gone = s.unsubscribe(operation[1])  # as the endpoint does: forget, then reply
            assert set(gone) <= set(operation[1])
            s.control(protocol.unsubscribed(None, tuple(operation[1])))
        self.check_invariants()

    def read_frames(self, frames: list[str]) -> None:
        for frame in frames:
            msg = json.loads(frame)
            if msg["type"] == "subscribed":
                f = self.replies.pop(0)
                assert msg["id"] == f["rid"]
                assert set(msg["versions"]) == set(f["keys"])
                for key, version in msg["versions"].items():
                    behind = key in f["since"] and version is not None and (
                        f["since"][key] is None or version > f["since"][key])
                    if behind:
                        self.repeat.add(key)  # the documented resume repeat: the reply's version, once more
                    else:
                        self.repeat.discard(key)
                    before = self.view.get(key)
                    assert version is None or before is None or version >= before
                    assert before is None or version is not None
                    self.view[key] = version
                    self.subscribed.add(key)
            elif msg["type"] == "unsubscribed":
                for key in msg["keys"]:
                    self.subscribed.discard(key)
                    self.view.pop(key, None)
                    self.last_inv.pop(key, None)
                    self.taken = {(k, v) for k, v in self.taken if k != key}
            else:
                assert msg["type"] == "invalidate"
                assert msg["keys"]
                for key, version in msg["keys"].items():
                    assert key in self.subscribed, f"{key} invalidated before its subscribed reply"
                    assert (key, version) not in self.taken, "sent twice"
                    assert key not in self.last_inv or version > self.last_inv[key], "not increasing"
                    current = self.view.get(key)
                    repeat = key in self.repeat and version == current
                    self.repeat.discard(key)
                    assert current is None or version > current or repeat, \
                        f"{key}@{version} not newer than {current}, which the client was told"
                    self.taken.add((key, version))
                    self.last_inv[key] = version
                    self.view[key] = version

    def settle(self) -> None:
        """Let any subscribe in flight complete, deliver the stream, then read everything."""
        while self.stream:
            self.apply(("deliver",))
        if self.flight is not None:
            self.apply(("read",))
            self.apply(("finish",))
        self.apply(("take",))
        assert self.session.take() == []


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60))
def test_session_client_ends_at_latest_versions_in_order_once(ops: list[tuple[Any, ...]]) -> None:
    model = Model()
    for operation in ops:
        model.apply(operation)
    model.settle()
    assert model.subscribed == set(model.session.known)
    for key in model.subscribed:
        assert model.view[key] == model.store.get(key), key
    assert not model.session.pending and not model.session.held


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), min_size=1, max_size=50))
def test_session_slow_reader_memory_bounded_by_subscriptions(batches: list[list[str]]) -> None:
    s = Session("t")
    s.begin_subscribe(["a", "b"])
    s.finish_subscribe(None, {"a": None, "b": None}, {}, None)
    s.take()
    offered = 0
    for n, batch in enumerate(batches, start=1):
        for key in batch:
            offered += s.offer(key, ver(n))
        assert len(s.pending) <= 2
    frames = s.take()
    assert len(frames) == (1 if offered else 0)
    sent = json.loads(frames[0])["keys"] if frames else {}
    assert s.coalesced == offered - len(sent)
    newest = {k: ver(n) for n, batch in enumerate(batches, start=1) for k in batch if k in ("a", "b")}
    assert sent == newest


def test_session_held_keys_wait_for_subscribed_reply() -> None:
    s = Session("t")
    s.begin_subscribe(["a"])
    assert s.offer("a", ver(2), commit_ms=5)
    assert s.take() == []                       # held while the subscription is set up
    s.finish_subscribe(1, {"a": ver(1)}, {"a": ver(1)}, ver(2))
    assert [json.loads(f) for f in s.take()] == [
        {"type": "subscribed", "versions": {"a": ver(2)}, "watermark": ver(2), "id": 1},
        {"type": "invalidate", "keys": {"a": ver(2)}},
    ]
    assert s.taken_commit_ms == 5


def test_session_abort_subscribe_forgets_new_keys_only() -> None:
    s = Session("t")
    s.begin_subscribe(["a"])
    s.finish_subscribe(None, {"a": None}, {}, None)
    new = s.begin_subscribe(["a", "b"])
    assert new == ["b"]
    s.abort_subscribe(["a", "b"], new)
    assert set(s.known) == {"a"} and not s.held
    assert not s.offer("b", ver(1))
    assert s.offer("a", ver(1))


def test_session_duplicate_keys_and_iterators_are_accepted() -> None:
    s = Session("t")
    assert s.begin_subscribe(iter(["a", "a", "b"])) == ["a", "b"]
    assert s.held == {"a", "b"}                 # an iterator is not consumed before the keys are held
    s.finish_subscribe(None, {"a": None, "b": None}, {}, None)
    assert s.unsubscribe(["a", "a"]) == ["a"]
    assert set(s.known) == {"b"}


def test_session_control_queue_raises_control_overflow_beyond_limit() -> None:
    wakes = []
    s = Session("t", control_limit=3, wake=lambda: wakes.append(1))
    for i in range(3):
        s.control(f"r{i}")
    with pytest.raises(ControlOverflow):
        s.control("r3")
    assert len(wakes) == 3
    assert s.depth == 3
    assert s.take() == ["r0", "r1", "r2"]
    s.control("r4")                            # room again once the writer drained the queue
    assert s.take() == ["r4"]


def test_session_finish_subscribe_overflow_when_replies_unread() -> None:
    s = Session("t", control_limit=1)
    s.control("unread")
    s.begin_subscribe(["a"])
    with pytest.raises(ControlOverflow):
        s.finish_subscribe(None, {"a": None}, {}, None)


# -- TokenBucket


def test_token_bucket_burst_of_twice_the_rate_then_refill() -> None:
    bucket = TokenBucket(rate=4, now=100.0)
    assert [bucket.take(100.0) for _ in range(9)] == [True] * 8 + [False]
    assert not bucket.take(100.125)            # half a token
    assert bucket.take(100.25)                 # one token refilled after 0.25 s at 4/s
    assert not bucket.take(100.25)
    assert sum(bucket.take(1000.0) for _ in range(30)) == 8  # a long idle refills to the burst only


def test_token_bucket_slow_rate_keeps_a_burst_of_one() -> None:
    bucket = TokenBucket(rate=0.5, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(1.0)
    assert bucket.take(2.0)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 100), gaps=st.lists(st.floats(0, 0.5), max_size=200))
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(rate: float, gaps: list[float]) -> None:
    now = 0.0
    bucket = TokenBucket(rate, now)
    admitted = 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now)
        assert admitted <= bucket.capacity + rate * now + 1e-6
    # and a client that keeps (just) under the rate is never refused
    steady = TokenBucket(rate, 0.0)
    assert all(steady.take(i * 1.001 / rate) for i in range(50))


def test_session_no_invalidate_older_than_the_subscribed_reply() -> None:
    """Review bug 3: a release offered while the subscribe's version read is in flight, with the version
    store already ahead of the event stream, must not follow the reply with an older invalidate."""
    model = Model()
    for operation in [("sub", ["a"], {}), ("release", ["a"], 1), ("ahead", ["a"], 1), ("read",), ("finish",),
                      ("take",), ("deliver",), ("take",)]:
        model.apply(operation)
    model.settle()
    assert model.view["a"] == ver(2)


def test_rate_guard_limits_then_closes_after_max_strikes_in_a_row() -> None:
    from gateway.session import RateGuard

    guard = RateGuard(rate=1, max_strikes=2, now=0.0)
    assert [guard.admit(0.0) for _ in range(2)] == ["ok", "ok"]      # the burst of twice the rate
    assert [guard.admit(0.0) for _ in range(3)] == ["limited", "limited", "close"]
    recovered = RateGuard(rate=1, max_strikes=2, now=0.0)
    assert [recovered.admit(0.0) for _ in range(4)] == ["ok", "ok", "limited", "limited"]
    assert recovered.admit(1.0) == "ok" and recovered.strikes == 0  # an admitted frame resets the strikes

"""The Python client's pure parts: the reconnect policy (docs/protocol.md) and `Outbox`, the sans-I/O
scheduler that gathers subscribe/unsubscribe calls into frames, paces them under the gateway's rate
limit, re-sends what the gateway dropped and reports refused keys. No socket, no clock: time is
passed in. clients/python/client.py is the I/O shell around it.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from gateway import errors as E

log = logging.getLogger(__name__)

State = Literal["connecting", "open", "reconnecting", "closed"]
QUEUE_BOUND = 10_000             # batches received and not yet taken by the app; the reader waits when full
LAPSES_KEPT = 100                # the most recent `lapse` messages kept in Client.lapses

# Reconnect policy (docs/protocol.md, "Client reconnect policy"; clients/js/freshwire.js follows the same).
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 10.0
STABLE_S = 30.0                                               # a connection up this long resets the back-off
RESTART_CLOSES = frozenset({E.CLOSE_SHUTDOWN, E.CLOSE_RESTART})  # the gateway is going away: at once (jittered)
CLOSE_ABNORMAL = 1006

# Outbound limits, under the gateway's defaults (docs/protocol.md, "Limits").
FRAMES_PER_S = 40.0              # frames per second we send: 80% of max_messages_per_s (50)
FRAME_BURST = 40                 # bursts: the gateway allows 100, and queues at most 64 replies
MAX_SUBSCRIPTIONS = 1000         # max_subscriptions: keys per connection, and per request
FRAME_BUDGET = 60_000            # bytes per subscribe frame (the gateway's limit is 65536)
REPLY_TIMEOUT_S = 10.0           # a subscribe/unsubscribe unanswered this long is taken as lost
RATE_BACKOFF_S = 0.25            # pause after a `rate_limited`, doubled per one in a row
LIMBO = 64                       # frames taken as lost whose late replies are still applied

T = TypeVar("T")                 # a ticket: settled when its keys are
R = TypeVar("R")                 # another request, sent first in first out


class ClientError(Exception):
    """The gateway (or the client, for `closed` and keys past `max_subscriptions`) refused a request;
    carries the protocol's code and, for subscribe(), the refused keys."""

    def __init__(self, code: str, message: str, keys: list[str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.keys = keys or []


def backoff_delay(attempt: int, min_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait before reconnect attempt `attempt` (0, 1, …): full jitter, rand() * min(max, min * 2^attempt)."""
    return rand() * min(max_s, min_s * 2.0 ** attempt)


def attempt_after_close(attempt: int, uptime_s: float, code: int) -> int:
    """The attempt count after a connection that was open `uptime_s` closed with `code`: back to 0 when
    it stayed up (STABLE_S) or the gateway is restarting (1001/1012), else unchanged, so that refusals
    right after opening (4001, 4008, 4013, a crash) keep the back-off growing."""
    return 0 if uptime_s >= STABLE_S or code in RESTART_CLOSES else attempt


def _key_cost(key: str) -> int:
    return 2 * len(key) + 30  # once in `keys`, once in `since` with a version


def _newest(a: str | None, b: str | None) -> str | None:
    return a if b is None or (a is not None and a > b) else b


# -- the scheduler, sans I/O

@dataclass(frozen=True)
class Frame:
    """A subscribe/unsubscribe to send now, as request `id`."""
    op: Literal["subscribe", "unsubscribe"]
    id: int
    keys: tuple[str, ...]


@dataclass(frozen=True)
class Other(Generic[R]):
    """A queued request to send now (with its own id)."""
    item: R


@dataclass(frozen=True)
class Wait:
    """Nothing to send before `seconds` from now, unless something changes."""
    seconds: float


@dataclass(frozen=True)
class Refusal:
    """Keys that are not subscribed and no longer wanted. `frame`: the gateway's error, or None when
    the client refused them (past `max_keys`)."""
    code: str
    message: str
    keys: tuple[str, ...]
    frame: dict[str, Any] | None = None


@dataclass(frozen=True)
class Settled(Generic[T]):
    """Every key of the ticket is live, refused or no longer wanted; `refusal` lists its refused keys."""
    ticket: T
    refusal: Refusal | None


class _Sent:
    __slots__ = ("id", "key_set", "keys", "op", "refusal", "refused", "sent_at")

    def __init__(self, frame: Frame, sent_at: float) -> None:
        self.op, self.id, self.keys, self.sent_at = frame.op, frame.id, frame.keys, sent_at
        self.key_set = frozenset(frame.keys)
        self.refused: set[str] = set()
        self.refusal: dict[str, Any] | None = None


class _Ticket(Generic[T]):
    __slots__ = ("error", "failed", "op", "pending", "ticket")

    def __init__(self, op: str, ticket: T) -> None:
        self.op, self.ticket = op, ticket
        self.pending: set[str] = set()
        self.failed: list[str] = []
        self.error: Refusal | None = None


class Outbox(Generic[T, R]):
    """What the client still has to tell the gateway about its keys, and when. No socket, no clock
    (`now`, in seconds, is passed in); the client moves frames in and out. Same logic as `Outbox` in
    clients/js/freshwire.js.

    - want()/unwant() calls made before the next frame is built merge: one frame for all of them, and
      a key wanted then unwanted meanwhile costs nothing. Frames hold at most `keys_per_frame` keys and
      about `frame_bytes` bytes; unsubscribes go first (they make room).
    - One subscribe/unsubscribe frame is in flight at a time. Every frame, other requests included,
      spends a token of a bucket of `burst` tokens refilled at `rate` per second.
    - A frame in flight when a `rate_limited` error arrives (it carries no id), or unanswered after
      `reply_timeout_s`, is taken as dropped: what is still needed goes out again, after a back-off.
      Its reply, if it comes after all, is still applied (replies come in request order).
    - `unavailable` is retried with back-off. Other refusals (`forbidden`, `too_many_keys`,
      `invalid_key`, …) end the keys: no longer wanted, reported as a Refusal. Keys past `max_keys`
      on the connection are refused as `too_many_keys` once the connection is full.
    - A ticket given to want()/unwant() settles (Settled) once each of its keys is live (or gone) on
      the gateway, refused, or no longer asked for; reset() (a new connection) keeps them.
    """

    def __init__(self, *, rate: float = FRAMES_PER_S, burst: int = FRAME_BURST, max_keys: int = MAX_SUBSCRIPTIONS,
                 keys_per_frame: int = MAX_SUBSCRIPTIONS, frame_bytes: int = FRAME_BUDGET,
                 reply_timeout_s: float = REPLY_TIMEOUT_S, min_backoff_s: float = MIN_BACKOFF_S,
                 max_backoff_s: float = MAX_BACKOFF_S, rand: Callable[[], float] = random.random,
                 now: float = 0.0) -> None:
        self.rate, self.burst, self.max_keys, self.keys_per_frame = rate, burst, max_keys, keys_per_frame
        self.frame_bytes, self.reply_timeout_s, self.rand = frame_bytes, reply_timeout_s, rand
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.wanted: dict[str, None] = {}       # keys the client wants subscribed, in the order asked
        self.live: dict[str, None] = {}         # keys the gateway confirmed on this connection
        self.inflight: _Sent | None = None
        self.limbo: dict[int, _Sent] = {}       # frames taken as lost, by id
        self.others: list[R] = []
        self.waiting: dict[str, set[_Ticket[T]]] = {}
        self.events: list[Settled[T] | Refusal] = []
        self.tokens, self.stamp = float(burst), now
        self.not_before = 0.0                   # every frame waits until then (rate_limited)
        self.retry_at = 0.0                     # subscribes wait until then (unavailable)
        self.strikes = 0                        # rate_limited in a row
        self.tries = 0                          # unavailable in a row

    def want(self, keys: Sequence[str], ticket: T | None = None) -> None:
        for key in keys:
            self.wanted.setdefault(key)
        self._track("subscribe", keys, ticket)
        for key in keys:
            self._recheck(key)

    def unwant(self, keys: Sequence[str], ticket: T | None = None) -> None:
        for key in keys:
            self.wanted.pop(key, None)
        self._track("unsubscribe", keys, ticket)
        for key in keys:
            self._recheck(key)

    def enqueue(self, item: R) -> None:
        self.others.append(item)

    def cancel(self, item: R) -> None:
        with contextlib.suppress(ValueError):
            self.others.remove(item)

    def reset(self, now: float) -> None:
        """A new connection: nothing live or in flight, a full bucket; wanted keys go out again."""
        self.live.clear()
        self.inflight = None
        self.limbo.clear()
        self.tokens, self.stamp = float(self.burst), now
        self.not_before = self.retry_at = 0.0
        self.strikes = self.tries = 0
        for key in list(self.waiting):
            self._recheck(key)

    def next(self, now: float, rid: int, others_only: bool = False) -> Frame | Other[R] | Wait | None:
        """What to send now (a Frame uses `rid`), a Wait, or None when idle."""
        self._refill(now)
        if self.inflight is not None and now >= self.inflight.sent_at + self.reply_timeout_s:
            self._lose(self.inflight)
        plan = self._plan() if not others_only and self.inflight is None else None
        wakes: list[float] = []
        if self.inflight is not None:
            wakes.append(self.inflight.sent_at + self.reply_timeout_s)
        if plan is not None and now < self.retry_at:
            wakes.append(self.retry_at)
            plan = None
        if plan is not None or self.others:
            at = max(self.not_before, now if self.tokens >= 1 else now + (1 - self.tokens) / self.rate + 0.001)
            if at <= now:
                self.tokens -= 1
                if plan is None:
                    return Other(self.others.pop(0))
                frame = Frame(plan[0], rid, plan[1])
                self.inflight = _Sent(frame, now)
                return frame
            wakes.append(at)
        return Wait(max(0.0, min(wakes) - now)) if wakes else None

    def on_rate_limited(self, now: float) -> None:
        """A `rate_limited` error: the frame in flight, if any, was dropped; pause, with back-off."""
        self.strikes += 1
        self.tokens, self.stamp = 0.0, now
        pause = min(self.max_backoff_s, RATE_BACKOFF_S * 2.0 ** (self.strikes - 1))
        self.not_before = now + pause * (0.5 + 0.5 * self.rand())
        if self.inflight is not None:
            self._lose(self.inflight)

    def on_reply(self, msg: dict[str, Any], now: float) -> bool:
        """A message with an id; False when it answers no subscribe/unsubscribe of ours."""
        rid = msg.get("id")
        sent = self.inflight if self.inflight is not None and self.inflight.id == rid else None
        if sent is None and isinstance(rid, int):
            sent = self.limbo.get(rid)
        if sent is None:
            return False
        current = sent is self.inflight
        kind, code, message = msg.get("type"), str(msg.get("code")), str(msg.get("message", ""))
        if sent.op == "unsubscribe":
            if kind not in ("unsubscribed", "error"):
                return True
            for key in sent.keys:  # refused only as malformed: nothing to retry, take them as gone
                self.live.pop(key, None)
        elif kind == "subscribed":
            versions = msg.get("versions")
            versions = versions if isinstance(versions, dict) else {}
            missing = [k for k in sent.keys if k not in versions and k not in sent.refused]
            for key in sent.keys:
                if key in versions:
                    self.live[key] = None
            if current:  # keys left out of `versions` were not subscribed (the forbidden list stops at 100)
                why = sent.refusal or {}
                self._refuse(missing, E.FORBIDDEN, str(why.get("message", "the gateway did not subscribe these keys")),
                             sent.refusal)
        elif kind == "error" and code == E.FORBIDDEN:
            listed = [k for k in msg.get("keys") or [] if k in sent.key_set]
            sent.refused.update(listed)
            sent.refusal = msg
            if current:
                self._refuse(listed, code, message, msg)
            if len(sent.refused) < len(sent.key_set):
                return True  # the other keys are subscribed: `subscribed` follows
        elif kind == "error" and code == E.UNAVAILABLE:
            if current:
                self.tries += 1
                self.retry_at = now + backoff_delay(self.tries, self.min_backoff_s, self.max_backoff_s, self.rand)
        elif kind == "error":
            # Refused as a whole. invalid_key names up to 5 offenders: only they end.
            named = [k for k in msg.get("keys") or [] if k in sent.key_set] if code == E.INVALID_KEY else []
            if current:
                self._refuse(named or list(sent.keys), code, message, msg)
        else:
            return True  # some other reply with our id: not the answer
        if current:
            self.inflight = None
            self.strikes = 0
            if code != E.UNAVAILABLE:
                self.tries = 0
        else:
            self.limbo.pop(sent.id, None)
        for key in sent.keys:
            self._recheck(key)
        return True

    def fail_all(self, code: str, message: str) -> list[R]:
        """The client is closed: settle every ticket with `code`; returns the requests never sent."""
        records = {record for records in self.waiting.values() for record in records}
        self.waiting.clear()
        for record in records:
            record.failed.extend(record.pending)
            record.error = record.error or Refusal(code, message, ())
            self._finish(record)
        self.wanted.clear()
        others, self.others = self.others, []
        return others

    def take(self) -> list[Settled[T] | Refusal]:
        events, self.events = self.events, []
        return events

    # -- internals
    def _refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def _plan(self) -> tuple[Literal["subscribe", "unsubscribe"], tuple[str, ...]] | None:
        gone = [k for k in self.live if k not in self.wanted]
        if gone:
            return "unsubscribe", self._chunk(gone)
        need = [k for k in self.wanted if k not in self.live]
        if not need:
            return None
        room = self.max_keys - len(self.live)
        if room <= 0:
            self._refuse(need, E.TOO_MANY_KEYS, f"at most {self.max_keys} keys per connection")
            return None
        return "subscribe", self._chunk(need[:room])

    def _chunk(self, keys: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        size = 64
        for key in keys:
            if out and (len(out) >= self.keys_per_frame or size + _key_cost(key) > self.frame_bytes):
                break
            out.append(key)
            size += _key_cost(key)
        return tuple(out)

    def _lose(self, sent: _Sent) -> None:
        self.inflight = None
        self.limbo[sent.id] = sent
        if len(self.limbo) > LIMBO:
            del self.limbo[next(iter(self.limbo))]
        for key in sent.keys:
            self._recheck(key)

    def _refuse(self, keys: Iterable[str], code: str, message: str, frame: dict[str, Any] | None = None) -> None:
        refused = tuple(k for k in keys if k in self.wanted)
        if not refused:
            return
        for key in refused:
            del self.wanted[key]
            for record in self.waiting.get(key, ()):
                if record.op == "subscribe":
                    record.failed.append(key)
                    record.error = record.error or Refusal(code, message, (), frame)
        self.events.append(Refusal(code, message, refused, frame))
        for key in refused:
            self._recheck(key)

    def _done(self, op: str, key: str) -> bool:
        inflight = self.inflight.op if self.inflight is not None and key in self.inflight.key_set else None
        if op == "subscribe":
            return key not in self.wanted or (key in self.live and inflight != "unsubscribe")
        return key in self.wanted or (key not in self.live and inflight != "subscribe")

    def _track(self, op: str, keys: Sequence[str], ticket: T | None) -> None:
        if ticket is None:
            return
        record = _Ticket(op, ticket)
        for key in keys:
            if not self._done(op, key):
                record.pending.add(key)
                self.waiting.setdefault(key, set()).add(record)
        if not record.pending:
            self._finish(record)

    def _recheck(self, key: str) -> None:
        records = self.waiting.get(key)
        if records is None:
            return
        for record in list(records):
            if self._done(record.op, key):
                records.discard(record)
                record.pending.discard(key)
                if not record.pending:
                    self._finish(record)
        if not records:
            del self.waiting[key]

    def _finish(self, record: _Ticket[T]) -> None:
        error = record.error
        refusal = None if not record.failed or error is None else \
            Refusal(error.code, error.message, tuple(record.failed), error.frame)
        self.events.append(Settled(record.ticket, refusal))


# -- the client: I/O around the Outbox

Request = tuple[int, dict[str, Any]]



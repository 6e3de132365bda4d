"""A Python client for protocol freshwire.v1: connect with a token, subscribe, iterate invalidations.

It reconnects by itself (the client reconnect policy of docs/protocol.md: exponential back-off with
full jitter, a fresh token from `get_token` when given) and resumes exactly: on every reconnect it
subscribes again with `since` set to the newest version it has seen of each key, so the gateway (any
gateway) sends exactly what was missed.

subscribe()/unsubscribe() calls made together share frames, and frames are paced under the
gateway's rate limit by `Outbox`, a sans-I/O scheduler: a call returns once the gateway confirmed
its keys, or raises ClientError for the keys it refused; a frame the gateway drops is sent again.

A `lapse` message (a guarantee did not hold for some keys) goes to `on_lapse` and into `lapses`;
`lag_s()` says how long the oldest batch received has been waiting for the application.

    async with Client("ws://127.0.0.1:18080/ws", token=token) as client:
        await client.subscribe(["card:1"])
        async for batch in client:          # {"card:1": "00000000019d0138"}
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from cdc.keys import key_for as key_for  # re-exported: clients build keys as the consumer renders them
from cdc.keys import valid_key
from gateway import errors as E
from gateway.protocol import SUBPROTOCOL, VERSION_RE

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


class Client:
    def __init__(self, url: str, token: str | None = None,
                 get_token: Callable[[], Awaitable[str]] | None = None,
                 min_backoff_s: float = MIN_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S,
                 on_state: Callable[[State], None] | None = None, record: bool = False,
                 frames_per_s: float = FRAMES_PER_S, frame_burst: int = FRAME_BURST,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS, reply_timeout_s: float = REPLY_TIMEOUT_S,
                 on_lapse: Callable[[dict[str, Any]], None] | None = None) -> None:
        if token is None and get_token is None:
            raise ValueError("pass token or get_token")
        self.url = url
        self._token = token
        self._get_token = get_token
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.on_state = on_state or (lambda _s: None)
        self.versions: dict[str, str | None] = {}   # newest version seen per subscribed key
        self.state: State = "connecting"
        self.connects = 0
        self._batches: asyncio.Queue[dict[str, str]] = asyncio.Queue(QUEUE_BOUND)
        self._received_at: deque[float] = deque()    # monotonic time each queued batch was read, oldest first
        self.on_lapse = on_lapse
        self.lapses: deque[dict[str, Any]] = deque(maxlen=LAPSES_KEPT)   # newest last
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}   # awaits and pings
        self._sent: set[int] = set()                 # ... of which sent on the current connection
        self._next_id = 1
        self._outbox: Outbox[asyncio.Future[None], Request] = Outbox(
            rate=frames_per_s, burst=frame_burst, max_keys=max_subscriptions, keys_per_frame=max_subscriptions,
            reply_timeout_s=reply_timeout_s, min_backoff_s=min_backoff_s, max_backoff_s=max_backoff_s,
            now=time.monotonic())
        self._with_since: set[str] = set()           # keys sent with `since` (given, or seen live before)
        self._reported: dict[str, str | None] = {}   # versions the gateway's replies reported
        self._wake = asyncio.Event()
        self._ws: Any = None
        self._open = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.errors: list[dict[str, Any]] = []
        self.record = record
        self.received: list[tuple[str, str]] = []  # every (key, version) as sent, when `record` is on (tests)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self, timeout_s: float = 10.0) -> None:
        self._task = asyncio.create_task(self._run(), name="freshwire-client")
        await asyncio.wait_for(self._open.wait(), timeout_s)

    async def close(self) -> None:
        self._set_state("closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:
            await self._ws.close()
        self._fail_all("closed", "the client is closed")

    def _set_state(self, state: State) -> None:
        if self.state != state:
            self.state = state
            self.on_state(state)

    def _fail_all(self, code: str, message: str) -> None:
        self._outbox.fail_all(code, message)
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ClientError(code, message))
        self._settle()

    # -- requests
    def _take_id(self) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        return rid

    async def _request(self, body: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        """Send `body` (paced, once connected) and return its reply."""
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        rid = self._take_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = future
        item = (rid, body)
        self._outbox.enqueue(item)
        self._wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._replies.pop(rid, None)
            self._sent.discard(rid)
            self._outbox.cancel(item)

    async def subscribe(self, keys: list[str], since: dict[str, str | None] | None = None) -> dict[str, str | None]:
        """Subscribe `keys` (and the keys of `since`: key -> version held, to resume); returns once the
        gateway confirmed them (waiting across reconnects), with their current versions.

        Calls made together share frames. Raises ClientError for keys the gateway refused (`forbidden`,
        `too_many_keys` past `max_subscriptions`, …; `.keys` lists them, they are not kept, the other
        keys stay subscribed), for a malformed key or version (`invalid_key`, `invalid_version`, nothing
        sent), or `closed`."""
        since = since or {}
        wanted = list(dict.fromkeys([*keys, *since]))
        bad = [k for k in wanted if not valid_key(k)]
        if bad:
            raise ClientError(E.INVALID_KEY, "keys are 1-256 characters of A-Z a-z 0-9 _ . : @ / + = -", bad[:5])
        bad = [k for k, v in since.items() if v is not None and not (isinstance(v, str) and VERSION_RE.match(v))]
        if bad:
            raise ClientError(E.INVALID_VERSION, "versions are 16 lowercase hex digits", bad[:5])
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        for key in wanted:
            self.versions.setdefault(key, since.get(key))
            if key in since:
                self._with_since.add(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.want(wanted, done)
        self._changed()
        await done
        return {k: _newest(self._reported.get(k), self.versions.get(k)) for k in wanted}

    async def unsubscribe(self, keys: list[str]) -> None:
        """Unsubscribe; returns once the gateway confirmed (no invalidate of these keys follows)."""
        if self.state == "closed":
            raise ClientError("closed", "the client is closed")
        for key in keys:
            self.versions.pop(key, None)
            self._with_since.discard(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.unwant(keys, done)
        self._changed()
        await done
        for key in keys:
            if key not in self.versions:
                self._reported.pop(key, None)

    async def drop(self) -> None:
        """Close the socket as a network fault would; the client reconnects and resumes by itself."""
        if self._ws is not None:
            await self._ws.close()

    async def wait_visible(self, write_token: str, timeout_ms: int = 5000) -> str:
        """Wait until the token's transaction is released; returns its version.
        Raises ClientError with code `timeout` (or another protocol error code)."""
        reply = await self._request({"op": "await", "token": write_token, "timeout_ms": timeout_ms},
                                    timeout_s=timeout_ms / 1000 + 10)
        if reply.get("type") != "visible":
            raise ClientError(str(reply.get("code")), str(reply.get("message")))
        return str(reply["version"])

    async def ping(self) -> None:
        await self._request({"op": "ping"})

    def _changed(self) -> None:
        self._settle()
        self._wake.set()

    def _settle(self) -> None:
        """Hand the outbox's events to the callers: settled calls, refused keys (dropped here)."""
        for event in self._outbox.take():
            if isinstance(event, Refusal):
                for key in event.keys:
                    self.versions.pop(key, None)
                    self._with_since.discard(key)
                    self._reported.pop(key, None)
                if event.frame is None:
                    self.errors.append({"type": "error", "code": event.code, "message": event.message,
                                        "keys": list(event.keys)})
            elif not event.ticket.done():
                if event.refusal is None:
                    event.ticket.set_result(None)
                else:
                    event.ticket.set_exception(ClientError(event.refusal.code, event.refusal.message,
                                                           list(event.refusal.keys)))

    def _absorb(self, reply: dict[str, Any]) -> None:
        """A `subscribed` reply. A key sent without `since` takes the reported version (no invalidate
        follows); one sent with `since` keeps it (an invalidate follows when it is behind)."""
        versions = reply.get("versions")
        for key, version in (versions if isinstance(versions, dict) else {}).items():
            if key not in self.versions:
                continue  # unsubscribed meanwhile
            self._reported[key] = version
            if key not in self._with_since:
                if self.versions[key] is None:
                    self.versions[key] = version
                self._with_since.add(key)  # from now on (resumes), send what we hold

    # -- the stream
    def __aiter__(self) -> AsyncIterator[dict[str, str]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, str]]:
        while True:
            batch = await self._batches.get()
            self._trim()
            yield batch

    async def next_batch(self, timeout_s: float) -> dict[str, str]:
        try:
            return await asyncio.wait_for(self._batches.get(), timeout_s)
        finally:
            self._trim()

    def lag_s(self) -> float:
        """How far the application trails this client: seconds since the oldest batch still waiting
        to be taken (`async for`, next_batch()) was read from the gateway; 0.0 when none waits. It
        counts nothing before the client read the frame (database, pipeline, network): no commit time
        travels on the wire."""
        self._trim()
        return max(0.0, time.monotonic() - self._received_at[0]) if self._received_at else 0.0

    def _trim(self) -> None:
        # One stamp per queued batch, both first in first out: batches taken drop the oldest stamps.
        while len(self._received_at) > self._batches.qsize():
            self._received_at.popleft()

    def _lapse(self, message: dict[str, Any]) -> None:
        """A `lapse`: kept in `lapses` and handed to `on_lapse`, whose failure is logged, not raised."""
        self.lapses.append(message)
        if self.on_lapse is None:
            return
        try:
            self.on_lapse(message)
        except Exception:
            log.exception("on_lapse failed for %s", message.get("reason"))

    # -- connection loop
    async def _token_now(self) -> str:
        if self._get_token is not None:
            self._token = await self._get_token()
        if self._token is None:
            raise ValueError("no token")
        return self._token

    async def _run(self) -> None:
        attempt = 0
        while True:
            opened_at: float | None = None
            code = CLOSE_ABNORMAL
            try:
                token = await self._token_now()
                async with websockets.connect(f"{self.url}?token={token}", subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                                              max_queue=None, open_timeout=5) as ws:
                    self._ws = ws
                    opened_at = time.monotonic()
                    await self._session(ws)
                code = ws.close_code or CLOSE_ABNORMAL
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else CLOSE_ABNORMAL
                if code == E.CLOSE_AUTH and self._get_token is None:
                    log.error("token refused (%s); not reconnecting", exc.rcvd.reason if exc.rcvd else "")
                    self._set_state("closed")
                    self._lost()
                    self._fail_all("closed", "the gateway refused the token (close 4001)")
                    return
            except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
                log.info("connect failed: %s", exc)
            except Exception:
                log.exception("connection failed")
            self._lost()
            self._set_state("reconnecting")
            if opened_at is not None:
                attempt = attempt_after_close(attempt, time.monotonic() - opened_at, code)
            await asyncio.sleep(backoff_delay(attempt, self.min_backoff_s, self.max_backoff_s))
            attempt += 1

    def _lost(self) -> None:
        self._open.clear()
        for rid in self._sent:
            future = self._replies.get(rid)
            if future is not None and not future.done():
                future.set_exception(ConnectionError("connection lost"))
        self._sent.clear()

    async def _session(self, ws: Any) -> None:
        """One connection: resume (every wanted key, with `since`), then read and send until it closes."""
        self.connects += 1
        self._outbox.reset(time.monotonic())
        self._settle()
        self._open.set()
        self._set_state("open")
        reader = asyncio.create_task(self._read(ws), name="freshwire-read")
        sender = asyncio.create_task(self._send(ws), name="freshwire-send")
        try:
            done, _ = await asyncio.wait((reader, sender), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, sender):
                task.cancel()
            await asyncio.gather(reader, sender, return_exceptions=True)
        for task in done:
            task.result()  # the close (ConnectionClosed) or a fault

    async def _send(self, ws: Any) -> None:
        """Sends what the outbox allows, when it allows it."""
        while True:
            self._wake.clear()
            rid = self._next_id
            step = self._outbox.next(time.monotonic(), rid)
            self._settle()
            if isinstance(step, Frame):
                self._next_id += 1
                body: dict[str, Any] = {"op": step.op, "id": step.id, "keys": list(step.keys)}
                since = {k: self.versions.get(k) for k in step.keys if k in self._with_since}
                if step.op == "subscribe" and since:
                    body["since"] = since
                await ws.send(json.dumps(body))
            elif isinstance(step, Other):
                item_id, request = step.item
                self._sent.add(item_id)
                await ws.send(json.dumps({**request, "id": item_id}))
            else:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that lands while
                # the wake-up completes, and close() then waited forever for this task.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if step is None else step.seconds):
                        await self._wake.wait()

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "invalidate":
                if self.record:
                    self.received.extend(message["keys"].items())
                fresh = {k: v for k, v in message["keys"].items()
                         if k in self.versions and (self.versions[k] or "") < v}
                if fresh:
                    received = time.monotonic()
                    await self._batches.put(fresh)
                    self._received_at.append(received)
                    # Only once queued: a connection lost while the queue is full must not leave
                    # `versions` (what a resume asks `since`) ahead of what the app was handed.
                    self.versions.update(fresh)
                continue
            if kind == "lapse":  # after the invalidate it concerns: that batch is queued already
                self._lapse(message)
                continue
            now = time.monotonic()
            rid = message.get("id")
            if kind == "error" and message.get("code") == E.RATE_LIMITED:  # no id: a frame was dropped
                self._outbox.on_rate_limited(now)
            elif rid is not None and self._outbox.on_reply(message, now):
                if kind == "subscribed":
                    self._absorb(message)
            elif isinstance(rid, int) and rid in self._replies:
                future = self._replies[rid]
                if not future.done():
                    future.set_result(message)
                continue
            if kind == "error":
                self.errors.append(message)
            self._changed()

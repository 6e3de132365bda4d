"""One connection's delivery state, sans I/O: what the client knows, what is pending, what to send.

Guarantees, per connection:
- only subscribed keys are delivered; a key's versions only increase; a (key, version) is sent once;
- pending invalidations coalesce per key to the newest version, so memory is bounded by the number
  of subscriptions (at most `max_subscriptions`), never by the event rate; a key's payload (`data`) is
  the one of its newest pending version, or none (a version offered without data drops older data);
- one invalidate carries at most `data_limit` bytes of data; keys past it go without (the client refetches);
- replies go out before invalidations that were queued with them, and keys whose subscription is
  being set up are held back until the `subscribed` reply is queued; after it, nothing at or below
  the version it reported is sent (except the documented resume repeat);
- a `visible` reply goes out after the invalidations queued before it (`control_after_pending`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from gateway import protocol


class ControlOverflow(Exception):
    """The client left more than `control_limit` replies unread: it is closed with CLOSE_POLICY."""


_NONE: frozenset[str] = frozenset()  # shared by the sessions holding no subscription in set-up


def _newer(version: str, than: str | None) -> bool:
    return than is None or version > than


class Session:
    # One per connection: slots, and a plain list for replies, keep it small.
    __slots__ = ("coalesced", "conn_id", "control_limit", "controls", "data", "data_limit", "held", "known", "lapses",
                 "oldest_commit_ms", "pending", "taken_commit_ms", "trailing", "wake")

    def __init__(self, conn_id: str, control_limit: int = 64, wake: Callable[[], None] | None = None,
                 data_limit: int = 65536) -> None:
        self.conn_id = conn_id
        self.control_limit = control_limit
        self.data_limit = data_limit
        self.data: dict[str, str] = {}           # pending key -> payload JSON of its pending version
        self.known: dict[str, str | None] = {}   # subscribed key -> newest version told or queued
        self.pending: dict[str, str] = {}        # key -> newest version not yet sent
        self.held: set[str] | frozenset[str] = _NONE  # subscriptions being set up (a set only meanwhile)
        self.controls: list[str] = []
        self.trailing: list[str] = []            # replies that must follow the invalidations pending now
        self.lapses: dict[str, tuple[set[str], str | None]] = {}  # reason -> (keys, newest version), merged
        self.coalesced = 0
        self.oldest_commit_ms = 0   # commit time of the oldest change waiting in `pending`
        self.taken_commit_ms = 0    # the same for the invalidate frame last returned by take()
        self.wake: Callable[[], None] = wake or (lambda: None)

    # -- subscriptions
    def begin_subscribe(self, keys: Iterable[str]) -> list[str]:
        """Start subscribing; returns the keys that are new to this connection."""
        keys = list(dict.fromkeys(keys))  # may be an iterator; used twice
        new = [k for k in keys if k not in self.known]
        for k in new:
            self.known[k] = None
        self.held = {*self.held, *keys}
        return new

    def finish_subscribe(self, rid: int | None, current: dict[str, str | None],
                         since: dict[str, str | None], watermark: str | None) -> None:
        """Queue the `subscribed` reply, then an invalidate for every `since` key that is behind."""
        versions: dict[str, str | None] = {}
        for key, version in current.items():
            if key not in self.known:
                continue  # unsubscribed meanwhile
            known = self.known[key]
            reported = version if version is not None and _newer(version, known) else known
            self.known[key] = reported
            versions[key] = reported
            behind = key in since and reported is not None and _newer(reported, since[key])
            if behind and reported is not None:
                if self.pending.get(key) != reported:
                    self.data.pop(key, None)  # a version read from the store carries no data
                self.pending[key] = reported  # the documented resume repeat: the reply's version, once more
            elif key in self.pending:
                # Offered while the read was in flight, at or below what the reply tells (the version
                # store can run ahead of the event stream): the reply covers it.
                del self.pending[key]
                self.data.pop(key, None)
        self._release(current)
        self.control(protocol.subscribed(rid, versions, watermark))
        if self.pending:
            self.wake()

    def abort_subscribe(self, keys: Iterable[str], new: Iterable[str]) -> None:
        self._release(keys)
        self.unsubscribe(new)

    def _release(self, keys: Iterable[str]) -> None:
        held = self.held.difference(keys)
        self.held = held if held else _NONE

    def unsubscribe(self, keys: Iterable[str]) -> list[str]:
        gone = [k for k in dict.fromkeys(keys) if k in self.known]
        for k in gone:
            del self.known[k]
            self.pending.pop(k, None)
            self.data.pop(k, None)
        return gone

    # -- deliveries
    def offer(self, key: str, version: str, commit_ms: int = 0, data: str | None = None) -> bool:
        """A released version of `key`, with its payload (JSON text) when it carries one; True if it is
        news to this client (and was queued)."""
        known = self.known.get(key, version)  # an unsubscribed key compares as not newer
        if known is not None and version <= known:
            return False
        if data is not None:
            self.data[key] = data
        elif self.data:
            self.data.pop(key, None)
        if not self.pending or not self.oldest_commit_ms:
            self.oldest_commit_ms = commit_ms
        self.known[key] = version
        if key in self.pending:
            self.coalesced += 1
        self.pending[key] = version
        return True

    def control(self, frame: str) -> None:
        if len(self.controls) >= self.control_limit:
            raise ControlOverflow(f"{len(self.controls)} replies unread")
        self.controls.append(frame)
        self.wake()

    def control_after_pending(self, frame: str) -> None:
        """A reply that must reach the client after every invalidation pending now (`visible` after the
        invalidate of its own transaction); an ordinary reply when nothing is pending."""
        if not self.pending:
            self.control(frame)
            return
        if len(self.controls) + len(self.trailing) >= self.control_limit:
            raise ControlOverflow(f"{len(self.controls) + len(self.trailing)} replies unread")
        self.trailing.append(frame)
        self.wake()

    def lapse(self, reason: str, keys: Iterable[str], version: str | None) -> None:
        """A guarantee lapsed for these subscribed keys: merged per reason until the next write (so a
        burst of lapses costs one frame per reason, never a reply slot each), and sent after the
        invalidate of the same write."""
        mine = {k for k in keys if k in self.known}
        if not mine:
            return
        held, newest = self.lapses.get(reason, (set(), None))
        held |= mine
        if version is not None and (newest is None or version > newest):
            newest = version
        self.lapses[reason] = (held, newest)
        self.wake()

    def take(self, replies_only: bool = False) -> list[str]:
        """Frames to write now: replies first, then one invalidate with every pending key not held, then
        the replies that had to wait for it. `replies_only` (the client has its unread budget
        unacknowledged): the replies, and everything else waits, coalescing."""
        frames, self.controls = self.controls, []
        self.taken_commit_ms = 0
        if replies_only:
            return frames
        if self.pending:
            if not self.held:  # the common case: everything pending goes
                ready, self.pending = self.pending, {}
            else:
                ready = {k: v for k, v in self.pending.items() if k not in self.held}
                for k in ready:
                    del self.pending[k]
            if ready:
                self.taken_commit_ms, self.oldest_commit_ms = self.oldest_commit_ms, 0
                frames.append(protocol.invalidate(ready, self._take_data(ready) if self.data else None))
        if self.trailing:
            frames.extend(self.trailing)
            self.trailing = []
        if self.lapses:
            frames.extend(protocol.lapse(reason, sorted(keys), version)
                          for reason, (keys, version) in self.lapses.items())
            self.lapses = {}
        return frames

    def _take_data(self, ready: dict[str, str]) -> dict[str, str]:
        """The data of the keys in `ready`, at most `data_limit` bytes of it (keys past it go without)."""
        data: dict[str, str] = {}
        budget = self.data_limit
        for key in ready:
            text = self.data.pop(key, None)
            if text is None:
                continue
            budget -= len(key) + len(text.encode()) + 4
            if budget < 0:
                continue
            data[key] = text
        return data

    @property
    def depth(self) -> int:
        return len(self.pending) + len(self.controls) + len(self.trailing)


class TokenBucket:
    """Messages per second with a burst of twice the rate; time is passed in."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateGuard:
    """The inbound rate limit of one connection, pure: each frame is admitted, refused with
    `rate_limited` ("limited"), or, past `max_strikes` refusals in a row, closes the connection."""

    __slots__ = ("bucket", "max_strikes", "strikes")

    def __init__(self, rate: float, max_strikes: int, now: float) -> None:
        self.bucket = TokenBucket(rate, now)
        self.max_strikes = max_strikes
        self.strikes = 0

    def admit(self, now: float) -> Literal["ok", "limited", "close"]:
        if self.bucket.take(now):
            self.strikes = 0
            return "ok"
        self.strikes += 1
        return "close" if self.strikes > self.max_strikes else "limited"

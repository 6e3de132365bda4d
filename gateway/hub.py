"""The process-wide subscription index and fan-out.

Fan-out never awaits a client: it updates each subscriber's Session (coalescing) and then wakes the
connection once per released batch, after every key of the batch is offered, so a connection gets one
invalidate per batch. By default waking sets the connection's writer task going, and what arrives
before it runs coalesces in the Session; with FRESHWIRE_DIRECT_WRITES waking writes at once when the
connection's transport takes it, else the Session keeps the change, coalesced, until the transport
drains (gateway/ws.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from contract.redis_layout import PrefixSet, Published
from gateway.session import Session


class Hub:
    def __init__(self) -> None:
        self.index: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self.deliveries = 0
        self._coalesced_closed = 0  # coalescing done for connections that have since closed
        self._deferred: list[Callable[[], None]] | None = None  # while corked: run by uncork()

    # -- one fan-out pass
    def cork(self) -> None:
        """Start a fan-out pass: connections defer their writes to its end (defer()), so each one
        writes what the pass gave it with one system call, however many batches the pass holds."""
        if self._deferred is None:
            self._deferred = []

    def defer(self, write: Callable[[], None]) -> bool:
        """Run `write` when the pass ends (True), or False outside a pass: write now."""
        if self._deferred is None:
            return False
        self._deferred.append(write)
        return True

    def uncork(self) -> None:
        """End the pass: the deferred writes, in the order they were deferred (they must not raise)."""
        deferred, self._deferred = self._deferred, None
        for write in deferred or ():
            write()

    def register(self, session: Session) -> None:
        self.sessions.add(session)

    def add(self, session: Session, keys: Iterable[str]) -> None:
        for key in keys:
            self.index.setdefault(key, set()).add(session)

    def remove(self, session: Session, keys: Iterable[str]) -> None:
        for key in keys:
            subscribers = self.index.get(key)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self.index[key]

    def drop(self, session: Session) -> None:
        self.remove(session, list(session.known))
        if session in self.sessions:
            self.sessions.discard(session)
            self._coalesced_closed += session.coalesced

    @property
    def coalesced(self) -> int:
        return self._coalesced_closed + sum(s.coalesced for s in self.sessions)

    @property
    def subscriptions(self) -> int:
        return sum(len(s) for s in self.index.values())

    def offer(self, key: str, version: str, commit_ms: int, data: str | None = None) -> int:
        delivered = 0
        for session in self.index.get(key, ()):
            if session.offer(key, version, commit_ms, data):
                session.wake()
                delivered += 1
        return delivered

    def offer_many(self, offers: Iterable[tuple[str, str, int, str | None]]) -> int:
        """(key, version, commit_ms, data) offers handed over together: each session touched is woken
        once, after all of them, so it gets them in one invalidate."""
        delivered = 0
        touched: dict[Session, None] = {}
        for key, version, commit_ms, data in offers:
            for session in self.index.get(key, ()):
                if session.offer(key, version, commit_ms, data):
                    touched[session] = None
                    delivered += 1
        for session in touched:
            session.wake()
        return delivered

    def _prefixed(self, prefixes: dict[str, tuple[str, int]]) -> list[tuple[str, str, int, str | None]]:
        """Offers for every subscribed key under a released prefix (prefix -> (version, commit_ms))."""
        if not prefixes:
            return []
        released = PrefixSet({prefix: version for prefix, (version, _ms) in prefixes.items()})
        offers: list[tuple[str, str, int, str | None]] = []
        for key in list(self.index):
            for prefix in released.covering(key):
                version, commit_ms = prefixes[prefix]
                offers.append((key, version, commit_ms, None))
        return offers

    def deliver(self, event: Published) -> int:
        """Hand one released batch to every subscriber; returns the number of (connection, key) deliveries."""
        data = event.data
        if len(event.keys) == 1 and not event.prefixes:  # the common case: no grouping needed
            key = event.keys[0]
            delivered = self.offer(key, event.version, event.commit_ts_ms, data.get(key) if data else None)
        else:
            offers = [(key, event.version, event.commit_ts_ms, data.get(key) if data else None)
                      for key in event.keys]
            offers += self._prefixed(dict.fromkeys(event.prefixes, (event.version, event.commit_ts_ms)))
            delivered = self.offer_many(offers)
        self.deliveries += delivered
        return delivered

    def deliver_many(self, events: Sequence[Published]) -> int:
        """Several released batches, in release order, handed over in one pass.

        Each key is offered once, at its newest version (with the oldest commit time among them), so
        the work is O(keys x subscribers) instead of O(batches x subscribers); a key keeps the data of
        its newest batch (or none, when that batch carries none). Every session ends in
        the state that delivering the batches one by one with no write in between would leave (a
        session keeps only each key's newest pending version); only the `deliveries` and
        `coalesced` counts are lower.
        """
        if len(events) == 1:
            return self.deliver(events[0])
        keys: dict[str, tuple[str, int, str | None]] = {}
        prefixes: dict[str, tuple[str, int]] = {}
        for event in events:
            for key in event.keys:
                seen = keys.get(key)
                keys[key] = (event.version, seen[1] if seen else event.commit_ts_ms, event.data.get(key))
            for prefix in event.prefixes:
                first = prefixes.get(prefix)
                prefixes[prefix] = (event.version, first[1] if first else event.commit_ts_ms)
        offers = [(key, version, commit_ms, data) for key, (version, commit_ms, data) in keys.items()]
        delivered = self.offer_many([*offers, *self._prefixed(prefixes)])
        self.deliveries += delivered
        return delivered

    def keys(self) -> list[str]:
        return list(self.index)

    def lapse(self, reason: str, version: str | None, keys: Sequence[str] = (), prefixes: Sequence[str] = (),
              everyone: bool = False) -> int:
        """Tell each subscriber of `keys` (or of a key under `prefixes`; every session when `everyone`)
        that a guarantee lapsed for those of its keys, after the invalidations already queued for it.
        Sessions merge lapses per reason (Session.lapse): bounded, and never a reply slot each.
        Returns the number of sessions told."""
        affected: dict[Session, list[str]] = {}
        if everyone:
            affected = {s: list(s.known) for s in self.sessions if s.known}
        else:
            released = PrefixSet(dict.fromkeys(prefixes, version or ""))
            for key in [*keys, *(k for k in self.index if prefixes and released.covering(k))]:
                for session in self.index.get(key, ()):
                    affected.setdefault(session, []).append(key)
        for session, names in affected.items():
            session.lapse(reason, names, version)
        return len(affected)

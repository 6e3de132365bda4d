"""The process-wide subscription index and fan-out.

Fan-out never awaits a client: it only updates each subscriber's Session (coalescing) and wakes
that connection's own writer task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from contract.redis_layout import PrefixSet, Published
from gateway.session import Session


class Hub:
    def __init__(self) -> None:
        self.index: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self.deliveries = 0
        self._coalesced_closed = 0  # coalescing done for connections that have since closed

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

    def deliver(self, event: Published) -> int:
        """Hand one released batch to every subscriber; returns the number of (connection, key) deliveries."""
        delivered = 0
        data = event.data
        for key in event.keys:
            delivered += self.offer(key, event.version, event.commit_ts_ms, data.get(key) if data else None)
        if event.prefixes:
            released = PrefixSet(dict.fromkeys(event.prefixes, event.version))
            for key in [k for k in self.index if released.covering(k)]:
                delivered += self.offer(key, event.version, event.commit_ts_ms)
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
        delivered = 0
        for key, (version, commit_ms, data) in keys.items():
            delivered += self.offer(key, version, commit_ms, data)
        if prefixes:
            released = PrefixSet({prefix: version for prefix, (version, _ms) in prefixes.items()})
            for key in list(self.index):
                for prefix in released.covering(key):
                    version, commit_ms = prefixes[prefix]
                    delivered += self.offer(key, version, commit_ms)
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

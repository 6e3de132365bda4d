"""The keys of one transaction, bounded: past a limit, keys degrade to the narrowest prefixes that fit.

Pure. A transaction of a few rows is carried key by key. One of 50,000 rows would make a Redis
script call, a pub/sub message, an ops record and every gateway's work grow with it, so past
`max_keys` keys (or `max_key_bytes` bytes of them) the set switches to *prefixes*: each key is
replaced by its prefix without the last field of its template (`tenant:7:card:5` -> `tenant:7:card:`),
one prefix per distinct value of the leading fields, so a tenant's degraded batch never names another
tenant's keys. If those prefixes are still more than `max_prefixes`, the set goes one field shorter
again (`tenant:`), until it fits or no template can be shortened further (then it is bounded by the
rules file: one literal prefix per template).

Never stale: every replacement is a string prefix of what it replaces, and a subscriber treats every
key under a released prefix as changed at the batch's version (one extra refetch at worst).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

# (table, key or prefix) -> a strict prefix of it one field shorter, or the same text when it cannot shrink.
Parent = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class KeyLimits:
    max_keys: int = 10_000
    max_key_bytes: int = 256 * 1024
    max_prefixes: int = 256
    # Payload (docs/cdc.md "Payload"): one key's data, and all of one transaction's; past either, keys go
    # without data (the client refetches them).
    max_payload_bytes: int = 8 * 1024
    max_tx_payload_bytes: int = 256 * 1024


class KeySet:
    def __init__(self, limits: KeyLimits, parent: Parent) -> None:
        self._limits = limits
        self._parent = parent
        self.keys: dict[str, str] = {}  # key -> its table (to shorten it along that table's templates)
        self.prefixes: dict[str, str] = {}  # prefix -> its table
        self._key_bytes = 0
        self.depth = 0  # fields dropped from templated keys; 0 while keys are carried one by one

    @property
    def degraded(self) -> bool:
        return self.depth > 0

    def add(self, table: str, keys: Iterable[str], prefixes: Iterable[str]) -> None:
        """Add one change's keys and prefixes. Once degraded, callers pass prefixes at the current
        `depth` (Rules.for_change); a key that still comes is folded into its parent here."""
        for prefix in prefixes:
            self.prefixes.setdefault(prefix, table)
        for key in keys:
            if key in self.keys:
                continue
            parent = self._parent(table, key) if self.degraded else key
            if parent == key:
                self.keys[key] = table
                self._key_bytes += len(key)
            else:
                self.prefixes.setdefault(parent, table)
        limits = self._limits
        if not self.degraded and (len(self.keys) > limits.max_keys or self._key_bytes > limits.max_key_bytes):
            self._fold_keys()
        if len(self.prefixes) > limits.max_prefixes:
            self._deepen()

    def add_all(self, other: KeySet) -> None:
        """Everything `other` holds, as this set's limits allow."""
        for prefix, table in other.prefixes.items():
            self.add(table, (), (prefix,))
        for key, table in other.keys.items():
            self.add(table, (key,), ())

    def _fold_keys(self) -> None:
        """Keys over the limit: each becomes its parent prefix, and from now on changes come as prefixes."""
        keys, self.keys, self._key_bytes = self.keys, {}, 0
        self.depth = max(self.depth, 1)
        for key, table in keys.items():
            parent = self._parent(table, key)
            if parent == key:
                self.keys[key] = table  # a literal key (a template without fields): bounded by the rules
                self._key_bytes += len(key)
            else:
                self.prefixes.setdefault(parent, table)

    def _deepen(self) -> None:
        """Prefixes over the limit: shorten every prefix by one field, while that still changes something."""
        while len(self.prefixes) > self._limits.max_prefixes:
            shorter: dict[str, str] = {}
            for prefix, table in self.prefixes.items():
                shorter.setdefault(self._parent(table, prefix), table)
            if shorter.keys() == self.prefixes.keys():
                return  # nothing can be shortened any more: bounded by the rules file
            self.prefixes = shorter
            self.depth += 1

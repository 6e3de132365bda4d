"""Write pacing: each connection writes at most once per `write_interval_ms`.

Fan-out can offer a connection a change every millisecond, and writing each at once makes the client
parse a frame per change: a client process holding many connections (a server-side renderer, a
proxy, a busy browser tab) then falls behind, and its lag hides in the socket buffers, where the
gateway cannot coalesce it (they hold megabytes before the transport pauses). A connection that wrote
less than the interval ago therefore waits: what arrives meanwhile is coalesced in its Session, per
key to the newest version, and goes out in one invalidate when one shared timer fires. A connection
that has been quiet for the interval writes at once, and replies (`pong`, `subscribed`, `visible`, ...)
are never held. One timer for all waiting connections, one entry per connection at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.hub import Hub


class WritePacer:
    __slots__ = ("handle", "hub", "interval_s", "waiting")

    def __init__(self, interval_s: float, hub: Hub) -> None:
        self.interval_s = interval_s
        self.hub = hub
        self.waiting: list[Callable[[], None]] = []
        self.handle: asyncio.TimerHandle | None = None

    def too_soon(self, written_at: float) -> bool:
        """True when a connection that last wrote at `written_at` (time.monotonic()) must wait."""
        return bool(self.interval_s) and time.monotonic() - written_at < self.interval_s

    def stamp(self) -> float:
        """The write time to remember (0.0 when pacing is off: nothing ever waits)."""
        return time.monotonic() if self.interval_s else 0.0

    def hold(self, release: Callable[[], None]) -> None:
        """Run `release` when the timer fires (at most `interval_s` from now); the caller holds one entry
        per connection at most."""
        self.waiting.append(release)
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(self.interval_s, self.fire)

    def fire(self) -> None:
        """Release every waiting connection in one fan-out pass (one write each, Hub.cork); a release must
        not raise."""
        self.handle = None
        waiting, self.waiting = self.waiting, []
        self.hub.cork()
        try:
            for release in waiting:
                release()
        finally:
            self.hub.uncork()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.waiting = []

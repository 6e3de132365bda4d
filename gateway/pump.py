"""The pump: released batches from the version store's event stream into the hub, in release order.

The gateway's data path is backend -> pump -> hub -> session -> ws. The pump owns the gateway's one
watermark (the newest release it has handed to the hub, and when it last moved), resolves awaits
after the hub has the release, tells clients about lapses, and resyncs after a backend break.
Supervised: a crash is logged, fails readiness (`alive`, `error`), and the pump restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from contract.redis_layout import Published
from gateway.awaits import Awaits
from gateway.backend import Backend, BackendUnavailable
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

RESTART_S = 0.5
MAX_GATHER = 1000  # released batches handed to the hub in one pass at most
# A pass of at most this many batches delivers every one of them (each connection writes once per pass,
# however many frames that is). A longer one means the gateway is behind. With writer tasks (the
# default) nothing is written inside a pass, so a Session keeps only each key's newest version anyway:
# the pass is delivered once per key at its newest version (Hub.deliver_many). With direct writes every
# frame a pass gives a connection goes out in its one write, so the pass is cut into DELIVER_EACH runs
# of consecutive batches, each coalesced per key: at most DELIVER_EACH batches' worth of work and one
# write per connection, whatever the backlog, and the newest version goes out in the same pass.
DELIVER_EACH = 16


class Watermark:
    """The newest release handed to the hub; only moves forward, and remembers when it last moved."""

    __slots__ = ("moved_at", "value")

    def __init__(self) -> None:
        self.value: str | None = None
        self.moved_at = time.monotonic()  # start counts as a move

    def advance(self, watermark: str | None) -> bool:
        if watermark is None or (self.value is not None and watermark <= self.value):
            return False
        self.value = watermark
        self.moved_at = time.monotonic()
        return True


class Pump:
    def __init__(self, backend: Backend, hub: Hub, awaits: Awaits, metrics: GatewayMetrics,
                 resync_chunk: int, direct_writes: bool = False) -> None:
        self.backend, self.hub, self.awaits, self.metrics = backend, hub, awaits, metrics
        self.resync_chunk = resync_chunk
        self.runs_when_behind = DELIVER_EACH if direct_writes else 1
        self.watermark = Watermark()
        self.alive = False
        self.error: str | None = None

    async def resync(self) -> None:
        """After a backend break: re-read every subscribed key and offer what clients missed."""
        self.metrics.resyncs.inc()
        keys = self.hub.keys()
        for i in range(0, len(keys), self.resync_chunk):
            versions = await self.backend.read_versions(keys[i:i + self.resync_chunk])
            self.hub.offer_many((key, version, 0, None) for key, version in versions.items() if version is not None)
        self.watermark.advance(await self.backend.watermark())
        # Live delivery was interrupted: the versions above are re-read, and every client is told so.
        self.metrics.lapses.labels("resync").inc()
        self.hub.lapse("resync", self.watermark.value, everyone=True)
        await self.awaits.recheck(self.backend)

    def release(self, events: list[Published]) -> None:
        """Hand released batches to the hub, then move the watermark, tell lapses and answer awaits, in
        release order (so `visible` never overtakes its own transaction's `invalidate`). One fan-out
        pass (Hub.cork): every connection writes what it got with one write, at the end."""
        if not events:
            return
        self.hub.cork()
        try:
            if len(events) <= DELIVER_EACH:
                for event in events:
                    self.hub.deliver(event)
            else:  # behind: runs_when_behind runs of consecutive batches, each coalesced per key
                step = -(-len(events) // self.runs_when_behind)
                for i in range(0, len(events), step):
                    self.hub.deliver_many(events[i:i + step])
            for event in events:
                self.watermark.advance(event.watermark)
                if event.lapse:
                    self.metrics.lapses.labels(event.lapse).inc()
                    self.hub.lapse(event.lapse, event.version, event.keys, event.prefixes)
                if event.tx_id:
                    self.awaits.resolve(event.tx_id, event.version)
        except Exception as exc:  # also runs as a loop callback: make a failure visible, as in run()
            self.alive = False
            self.error = repr(exc)
            log.exception("release failed")
        finally:
            events.clear()
            self.hub.uncork()

    async def run(self) -> None:
        """Batches that arrive together (the backend yields them without suspending while they are
        buffered) are gathered and handed to the hub in one pass once the pump waits again, at most
        MAX_GATHER at a time: under a burst, fan-out costs once per burst instead of once per batch,
        and the writers are not starved by a pump that never yields."""
        loop = asyncio.get_running_loop()
        gathered: list[Published] = []
        while True:
            try:
                self.alive = True
                async for event in self.backend.events():
                    if not isinstance(event, Published):
                        self.release(gathered)
                        await self.resync()
                        continue
                    if not gathered:
                        loop.call_soon(self.release, gathered)
                    gathered.append(event)
                    if len(gathered) >= MAX_GATHER:
                        self.release(gathered)  # the scheduled call then finds nothing, or the next burst
            except asyncio.CancelledError:
                raise
            except BackendUnavailable as exc:
                log.warning("resync failed, retrying: %s", exc)
            except Exception as exc:
                self.alive = False
                self.error = repr(exc)
                log.exception("pump crashed; restarting")
            await asyncio.sleep(RESTART_S)

"""Everything one gateway process shares between its connections, built once in the lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.auth import Verifier
from gateway.awaits import Awaits
from gateway.backend import Backend
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    verifier: Verifier
    backend: Backend
    hub: Hub = field(default_factory=Hub)
    metrics: GatewayMetrics = field(init=False)
    awaits: Awaits = field(init=False)
    pump_alive: bool = False
    pump_error: str | None = None
    watermark_moved_at: float = field(default_factory=time.monotonic)  # start counts as a move

    def __post_init__(self) -> None:
        self.metrics = GatewayMetrics(self.hub)
        self.awaits = Awaits(self.settings.max_awaits)

    def advance_watermark(self, watermark: str | None) -> None:
        if self.hub.advance_watermark(watermark):
            self.watermark_moved_at = time.monotonic()

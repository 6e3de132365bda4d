"""Everything one gateway process shares between its connections, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import Verifier
from gateway.awaits import Awaits
from gateway.backend import Backend
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.pump import Pump
from gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    verifier: Verifier
    backend: Backend
    hub: Hub = field(default_factory=Hub)
    metrics: GatewayMetrics = field(init=False)
    awaits: Awaits = field(init=False)
    pump: Pump = field(init=False)

    def __post_init__(self) -> None:
        self.awaits = Awaits(self.settings.max_awaits)
        self.metrics = GatewayMetrics(self.hub, self.awaits)
        self.pump = Pump(self.backend, self.hub, self.awaits, self.metrics, self.settings.resync_chunk,
                         self.settings.direct_writes)

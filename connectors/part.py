"""One part of a stack: how to build its process, the setup that follows its readiness, and
whether it is an app (skipped by --no-apps)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from connectors import procs
from connectors.stack_settings import StackSettings


@dataclass
class Part:
    name: str
    build: Callable[[StackSettings], procs.Proc]
    after: Callable[[StackSettings], None] | None = None
    app: bool = False
    after_always: bool = False  # run `after` even when the part was already running (idempotent setup)
    # Consecutive parts of one group start together, then each is waited for (a KRaft node is not
    # ready before a quorum of its peers runs); `after` runs once all of them are ready, in order.
    group: str = ""

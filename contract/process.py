"""What every long-running Freshwire process (the consumer, the sink) does with SIGTERM and Ctrl-C:
finish the item in hand, then stop. The event is what their loops wait on."""

from __future__ import annotations

import logging
import signal
import threading


def stop_on_signals(log: logging.Logger, in_hand: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT (logged once per signal with what is finished first)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: finishing the %s in hand, then stopping", signum, in_hand)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop

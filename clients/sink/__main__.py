"""`python -m clients.sink`: POST every batch of the ops topic to a URL until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys

from confluent_kafka import KafkaException

from clients.sink.run import Sink
from clients.sink.settings import SettingsError, load_settings
from contract.process import stop_on_signals

log = logging.getLogger("clients.sink")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request: the sink logs its own
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"freshwire-sink: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals(log, "record")
    try:
        Sink(settings, stop).run()
    except KafkaException as exc:
        log.error("stopped: kafka: %s", exc)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

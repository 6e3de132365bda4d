"""`python -m cdc` / `freshwire-cdc`: run the consumer until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys

from cdc.consumer import Pipeline
from cdc.effects import EffectError
from cdc.errors import RulesError, SettingsError
from cdc.metrics import Metrics, serve
from cdc.rules import load_rules
from cdc.settings import load_settings
from contract.process import stop_on_signals

log = logging.getLogger("cdc")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(argv)
        rules = load_rules(settings.rules_path)
    except (SettingsError, RulesError) as exc:
        print(f"freshwire-cdc: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals(log, "batch")
    metrics = Metrics()
    server = serve(metrics, settings.cdc_metrics_host, settings.cdc_metrics_port)
    log.info("rules: %s table(s) from %s", len(rules.tables), settings.rules or "(defaults only)")
    try:
        pipeline = Pipeline(settings, rules, metrics, stop)
        refused = pipeline.redis.refusal()
        if refused:
            log.error("%s", refused)
            print(f"freshwire-cdc: {refused}", file=sys.stderr)
            pipeline.close()
            return 2
        pipeline.run()
    except EffectError as exc:
        log.warning("stopped with effects pending (they replay on the next start): %s", exc)
    finally:
        server.shutdown()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

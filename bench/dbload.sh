#!/usr/bin/env bash
# bench/dbload.py on a private stack: its own ports and state dir, so it never touches a stack
# running on the default ports. Flags pass through, e.g. bash bench/dbload.sh --seconds 15 --clients 20
set -euo pipefail
cd "$(dirname "$0")/.."
export FRESHWIRE_STATE_DIR="${FRESHWIRE_STATE_DIR:-/tmp/fw-dbload}"
export FRESHWIRE_PG_PORT=15632 FRESHWIRE_REDIS_PORT=16579 FRESHWIRE_KAFKA_PORT=19292
export FRESHWIRE_KAFKA_CONTROLLER_PORT=19293 FRESHWIRE_CONNECT_PORT=18283 FRESHWIRE_GATEWAY_PORT=18280
export FRESHWIRE_GATEWAY2_PORT=18281 FRESHWIRE_CDC_METRICS_PORT=19308 FRESHWIRE_DEMO_PORT=18290
export FRESHWIRE_REPLICA_PORT=15633 FRESHWIRE_REPLICA=0
exec .venv/bin/python -m bench.dbload "$@"

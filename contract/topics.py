"""The Kafka topics, named once: what Debezium writes, what the consumer writes, what the sink reads.

The connector routes every record into CHANGES (connectors/freshwire-postgres.json, RegexRouter), a
single partition for one total commit order (docs/cdc.md).
"""

from __future__ import annotations

from typing import Final

CHANGES: Final = "freshwire.cdc"              # Debezium's change events, transaction markers, heartbeats
OPS: Final = "freshwire.invalidations"        # one record per released transaction (contract/ops_record.py)
DLQ: Final = "freshwire.dlq"                  # what the consumer could not decode, and its notes
SINK_DLQ: Final = "freshwire.sink.dlq"        # what the cache-purge sink could not deliver

"""The contract shared by Freshwire's tiers: what one writes and another reads.

- `redis_layout`: the Redis keys, scripts and channel the cdc consumer releases to and gateways read
- `keys`: how a row's values become cache keys (and the key alphabet gateways accept)
- `versions`: how a commit LSN becomes a version string, and back
- `topics`: the Kafka topic names
- `ops_record`: the JSON record on the ops topic, written by the consumer and the sink
- `envflags`: the one settings loader every process uses
- `redis_health`: the Redis settings every process refuses to run against
- `process`: what every long-running process does on SIGTERM and Ctrl-C

Nothing here does I/O at import, and nothing here imports cdc, gateway, connectors or clients.
"""

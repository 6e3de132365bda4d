"""cdc: Debezium change events in, exact invalidation batches out (Redis and the ops topic)."""

"""The cache-purge sink: the ops topic `freshwire.invalidations` in, signed idempotent HTTP POSTs out.

`core` is pure (request body, signature, retry schedule, response classification); `run` is the
thin Kafka + HTTP loop around it; `python -m clients.sink` runs it until SIGTERM.
"""

"""gateway: the WebSocket fan-out of Freshwire's invalidations (protocol freshwire.v1)."""

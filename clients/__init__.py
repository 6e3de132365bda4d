"""Freshwire's clients: the JS client (`clients/js/`) and the cache-purge sink (`clients.sink`)."""

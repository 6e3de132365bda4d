"""The Python client of protocol freshwire.v1 (`from clients.python.client import Client`)."""

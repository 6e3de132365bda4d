"""Moved to clients/python/ (client code lives with the clients): `clients.python.client` (the I/O
shell) and `clients.python.outbox` (its pure scheduler and reconnect policy). This module keeps the
import path the docs gave (`from gateway.client import Client`) working."""

from clients.python.client import Client as Client
from clients.python.client import key_for as key_for
from clients.python.outbox import *  # noqa: F403  (every name the client module had)
from clients.python.outbox import ClientError as ClientError
from clients.python.outbox import State as State

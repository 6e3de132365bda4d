"""The soak's socket census (bench/soak.py socket_peers) on real loopback sockets: a connection its
peer reset leaves the TCP tables while its fd stays open, and is still counted under its peer."""

from __future__ import annotations

import os
import socket
import struct
import time

from bench.soak import socket_peers, tcp_sockets


def _inode(sock: socket.socket) -> str:
    return os.readlink(f"/proc/self/fd/{sock.fileno()}")[8:-1]


def test_a_socket_reset_by_its_peer_keeps_its_peer_name_until_it_is_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        seen: dict[str, str] = {}
        peers = socket_peers(os.getpid(), {port: "redis"}, seen)
        assert peers["redis established"] == 1 and peers[f"clients of :{port} established"] == 1
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # an RST: the client's socket leaves the TCP tables, its fd stays open
        deadline = time.monotonic() + 5
        while _inode(client) in tcp_sockets() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _inode(client) not in tcp_sockets()
        assert socket_peers(os.getpid(), {port: "redis"}, seen).get("redis closed") == 1
        inode = _inode(client)
        client.close()
        assert "redis closed" not in socket_peers(os.getpid(), {port: "redis"}, seen)
        assert inode not in seen  # the memo holds only sockets still open


def test_a_socket_never_seen_in_a_tcp_table_is_not_named() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert not any(name.endswith(" closed") for name in socket_peers(os.getpid(), {}, {}))

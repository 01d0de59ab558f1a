"""tests/support/redis_server.hold_port: a stopped server's port stays its own until it starts
again (the Jenkins fake's restart and a test's own Redis stopped and started use it)."""

import errno
import socket

import pytest

from tests.support.redis_server import free_port, hold_port


def test_a_held_port_refuses_connections_and_no_other_socket_takes_it():
    port = free_port()
    held = hold_port(port)
    try:
        with socket.socket() as client:
            with pytest.raises(ConnectionRefusedError):  # as with nothing on the port
                client.connect(("127.0.0.1", port))
        with socket.socket() as other:  # a socket that does not share the port
            with pytest.raises(OSError) as refused:
                other.bind(("127.0.0.1", port))
            assert refused.value.errno == errno.EADDRINUSE
    finally:
        held.close()
    with socket.socket() as server:  # released: the server binds it again
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()

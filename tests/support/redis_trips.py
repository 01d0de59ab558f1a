"""A TCP proxy in front of redis-server that counts round trips: on each connection, every
time the client sends after the server has answered (or sends first) is one more. A pipeline
is one round trip however redis-py cuts it into writes; a command sent alone is one each.
Every byte goes through untouched, both ways."""

import threading

from tests.support.tcp_relay import TcpRelay


class RoundTripProxy(TcpRelay):
    def __init__(self, upstream: tuple[str, int]):
        self._lock = threading.Lock()
        self._trips = 0
        super().__init__(upstream, "redis-trips-proxy")

    @property
    def trips(self) -> int:
        with self._lock:
            return self._trips

    def new_connection(self) -> list[bool]:
        return [True]  # the server spoke last (or nobody yet)

    def seen(self, chunk: bytes, from_client: bool, answered: list[bool]) -> None:
        with self._lock:
            if from_client and answered[0]:
                self._trips += 1
            answered[0] = not from_client

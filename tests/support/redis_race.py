"""A TCP proxy in front of redis-server that plays another worker winning every reservation
race: just before it forwards a command that runs a given Lua script (EVALSHA by the script's
SHA1, or EVAL with its text, as redis-py sends them), it calls `before()` and waits for it, so
whatever `before` writes lands between the caller's read and its script, deterministically,
as a worker on another machine may. Every other byte goes through untouched, both ways.

Commands reach the proxy as redis-py writes them (a command, or a pipeline, per send): a chunk
naming the script is the script's command; the reads before it have been answered already.
"""

import hashlib
from collections.abc import Callable

from tests.support.tcp_relay import TcpRelay


class ScriptRaceProxy(TcpRelay):
    def __init__(self, upstream: tuple[str, int], script: str, before: Callable[[], None]):
        self._marks = (hashlib.sha1(script.encode()).hexdigest().encode(), script.encode())
        self._before = before
        self.raced = 0
        super().__init__(upstream, "redis-race-proxy")

    def seen(self, chunk: bytes, from_client: bool, state: None) -> None:
        if from_client and any(mark in chunk for mark in self._marks):
            self._before()
            self.raced += 1

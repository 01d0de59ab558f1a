"""A TCP proxy in front of redis-server that plays another worker winning every reservation
race: just before it forwards a command that runs a given Lua script (EVALSHA by the script's
SHA1, or EVAL with its text, as redis-py sends them), it calls `before()` and waits for it, so
whatever `before` writes lands between the caller's read and its script, deterministically,
as a worker on another machine may. Every other byte goes through untouched, both ways.

Commands reach the proxy as redis-py writes them (a command, or a pipeline, per send): a chunk
naming the script is the script's command; the reads before it have been answered already.
"""

import hashlib
import socket
import threading
from collections.abc import Callable


class ScriptRaceProxy:
    def __init__(self, upstream: tuple[str, int], script: str, before: Callable[[], None]):
        self._upstream = upstream
        self._marks = (hashlib.sha1(script.encode()).hexdigest().encode(), script.encode())
        self._before = before
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.raced = 0
        self._stopped = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="redis-race-proxy").start()

    def stop(self) -> None:
        self._stopped = True
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if from_client and any(mark in chunk for mark in self._marks):
                    self._before()
                    self.raced += 1
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

"""A TCP proxy in front of redis-server that counts round trips: on each connection, every
time the client sends after the server has answered (or sends first) is one more. A pipeline
is one round trip however redis-py cuts it into writes; a command sent alone is one each.
Every byte goes through untouched, both ways."""

import socket
import threading


class RoundTripProxy:
    def __init__(self, upstream: tuple[str, int]):
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._trips = 0
        self._stopped = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="redis-trips-proxy").start()

    @property
    def trips(self) -> int:
        with self._lock:
            return self._trips

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
            answered = [True]  # per connection: the server spoke last (or nobody yet)
            threading.Thread(target=self._pump, args=(client, server, True, answered),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, answered),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool,
              answered: list[bool]) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    if from_client and answered[0]:
                        self._trips += 1
                    answered[0] = not from_client
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

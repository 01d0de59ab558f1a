"""A TCP relay in front of a server (redis-server in the tests): every byte goes through
untouched, both ways, one thread a direction; a subclass looks at each chunk before it is
forwarded (`seen`), with a state of its own per connection (`new_connection`)."""

import socket
import threading
from typing import Any


class TcpRelay:
    def __init__(self, upstream: tuple[str, int], name: str):
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name=name).start()

    def new_connection(self) -> Any:
        """The state `seen` is given for each chunk of one connection."""
        return None

    def seen(self, chunk: bytes, from_client: bool, state: Any) -> None:
        """Called with each chunk before it is forwarded; the chunk waits for it."""

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
            state = self.new_connection()
            for src, dst, from_client in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, from_client, state),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool,
              state: Any) -> None:
        try:
            while chunk := src.recv(65536):
                self.seen(chunk, from_client, state)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

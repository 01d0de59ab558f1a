"""The socket as a web worker's thread reads a request through gunicorn's parser
(service.http_worker): one deadline for the whole head, then for the whole body, and first the
part of the body the worker's main loop already read. A client too slow is cut off, logged
without more than its address.
"""

import logging
import socket
import time
from typing import Any

from gunicorn.http.errors import NoMoreData

log = logging.getLogger("ci_autoscaler.web")


class ReadTimedOut(NoMoreData, TimeoutError):
    """A client too slow. gunicorn's parser takes it as a client gone (it closes the
    connection, answers nothing); the app's body read sees a TimeoutError (service.edge: 408;
    a NoMoreData that is none, a client gone, is 400)."""

    def __init__(self, phase: str, seconds: float):
        super().__init__()
        self.phase, self.seconds = phase, seconds

    def __str__(self) -> str:
        return f"the request's {self.phase} did not arrive within {self.seconds:g} s"


def address(client: Any) -> str:
    return client[0] if isinstance(client, tuple) else str(client)


def cut_off(phase: str, seconds: float, client: Any) -> None:
    log.warning("slow client cut off", extra={
        "phase": phase, "seconds": seconds, "remote_addr": address(client)})


class DeadlineReader:
    """The socket as gunicorn's parser reads it (recv, and the timeout its body drain sets),
    with one deadline for the whole head, then for the whole body: a client that sends a byte
    a second never resets a per-read timeout. What the main loop read of the body comes
    first (`pending`): given to gunicorn's unreader, it was copied whole at each of its reads
    (+8 MiB at the peak for a body of 4 MiB)."""

    def __init__(self, sock: socket.socket, client: Any):
        self.sock, self.client = sock, client
        self.deadline: float | None = None
        self.phase, self.seconds = "head", 0.0
        self.pending: bytearray | None = None
        self.taken = 0

    def give(self, pending: bytearray) -> None:
        self.pending, self.taken = pending, 0

    def start(self, phase: str, seconds: float, deadline: float | None = None) -> None:
        self.phase, self.seconds = phase, seconds
        self.deadline = deadline if deadline is not None else time.monotonic() + seconds

    def recv(self, size: int) -> bytes:
        if self.pending is not None:
            with memoryview(self.pending) as view:
                data = bytes(view[self.taken:self.taken + size])
            self.taken += len(data)
            if self.taken >= len(self.pending):
                self.pending = None
            return data
        if self.deadline is None:
            return self.sock.recv(size)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            cut_off(self.phase, self.seconds, self.client)
            raise ReadTimedOut(self.phase, self.seconds)
        timeout = self.sock.gettimeout()
        if timeout is not None and timeout <= remaining:  # the caller's own, shorter timeout
            return self.sock.recv(size)
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(size)
        except socket.timeout:
            cut_off(self.phase, self.seconds, self.client)
            raise ReadTimedOut(self.phase, self.seconds) from None
        finally:
            self.sock.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

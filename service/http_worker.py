"""The web process's gunicorn worker: gthread, with no slow client ever holding a thread or
its main loop.

gunicorn's gthread hands a connection to a thread as soon as its first byte arrives, and the
thread then waits on the socket with no time limit: two clients that send half a request line
hold two threads for good. It also closes a connection on its main loop, lingering up to 2 s
for the client to close its end (util.close_graceful), and no connection is accepted meanwhile.
Here, in the main loop and without blocking, a request's head is read and handed to a thread
only once complete (within HEADER_READ_TIMEOUT_SECONDS), and closes linger in the poller. A body
the app will read (a webhook's, with its token: the app's `body_wanted`) is read there too, and
the request handed on once it is all here, or at BODY_READ_TIMEOUT_SECONDS after its head (the
app then answers 408); a thread read it before, and THREADS token holders sending bodies slowly
held every thread (tests/integration/test_slow_clients.py).
A head that outgrows HEAD_BUFFER_BYTES without its end is refused there and then (431). At
gthread's `worker_connections`, where it would stop accepting, the oldest head still arriving,
else the oldest idle kept-alive connection, else the oldest body arriving, else the oldest
drain, is closed to make room for the new one. A body past the app's limit that it drops
unread (service.edge's SERVER_DRAINS) is read after the answer by the connection's lingering
close, which counts as a connection until then (a graceful stop waits for it). A thread reads
its request through service.deadline_reader, within the same deadlines.
"""

import errno
import logging
import selectors
import socket
import threading
import time
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from service.body_wait import SERVER_DRAINS, BodyWait, arrived, body_wait, head_environ
from service.deadline_reader import DeadlineReader, ReadTimedOut, address, cut_off
from service.refused_requests import hide_queries, write_json_error

# A request's head (request line and headers) must have arrived this long after the first
# moment it could be read: a new connection's accept, or a kept-alive one turning readable.
# GitLab, Jenkins and Prometheus send theirs in one packet.
HEADER_READ_TIMEOUT_SECONDS = 5.0
# The body must have arrived this long after its head: GitLab waits 10 s for the whole answer.
BODY_READ_TIMEOUT_SECONDS = 10.0
# A head past this size without its end is answered 431 and closed by the main loop. It was
# handed to a thread to read the rest within the head's deadline: THREADS clients, without a
# token, each sending 65 KiB of header lines and no end, held every thread for 5 s at a time.
# GitLab's, Jenkins' and Prometheus' heads are a few KiB; a complete head past this size (one
# read brought its end) still goes to gunicorn's parser and its own limits.
HEAD_BUFFER_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024
# After an answer, a body the app did not read (a 401 or 404 to a POST) is drained for
# keep-alive only if it has all arrived, and is at most this long; otherwise the connection
# closes (and lingers in the poller). Nothing is waited for: a clock would also take a body that
# is all here for a slow one whenever a busy machine leaves the thread unscheduled for a while.
DRAIN_BYTES = 64 * 1024
# A closing connection: FIN sent, then what the client still sends is read for up to this long
# or this many bytes, so that the client gets our answer rather than a reset (RFC 9112 9.6);
# gunicorn's util.close_graceful uses the same figures, on its main loop.
CLOSE_LINGER_SECONDS = 2.0
CLOSE_LINGER_BYTES = 64 * 1024
# The response to Expect: 100-continue, sent by the main loop when it reads the body (curl sends
# the header with a body over 1 MiB and waits a second for it before sending the body anyway).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# The bodies the main loop read, in all, from their first byte until their request is done
# (arriving, then waiting for a free thread, then on it): 8 at the default limit of 4 MiB
# (what the 8 threads held reading them); past it a body is read on a thread, as before, so
# token holders cannot grow the worker without bound (the chart gives 2 workers 384 MiB).
BODIES_BUFFERED_BYTES = 32 * 2**20

log = logging.getLogger("ci_autoscaler.web")
# gunicorn answers a request it cannot parse (its handle_error) through util.write_error, with
# an HTML page quoting what the client sent; the web answers it in JSON like every other refusal
# (service.refused_requests.write_json_error). Set where gunicorn loads this worker class.
util.write_error = write_json_error


class Conn(TConn):
    """A gthread connection whose graceful close lingers in its worker's poller."""

    def __init__(self, worker: "Worker", *args: Any):
        super().__init__(*args)
        self.worker = worker
        self.head: bytearray | None = None  # the head arriving, while the poller holds it
        self.wait: BodyWait | None = None  # then its body, when the main loop reads it
        self.body_deadline: float | None = None  # the body's, when the main loop read it
        self.continued = False  # its Expect: 100-continue answered by the main loop, or not due
        self.limit = 0  # the app's limit for that body
        self.drain = 0  # body bytes the app left to read and drop after its answer
        self.lingered = 0  # bytes read while lingering
        self.held = 0  # what the main loop read of its request for the body (in `buffered`)

    def drain_after_answer(self, size: int) -> None:
        """The app's SERVER_DRAINS (service.edge): the connection closes after the answer,
        and its lingering close reads up to this many more bytes, for up to a body's
        deadline."""
        self.drain = size

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self)
        else:
            super().close()


class Worker(ThreadWorker):
    """gthread, with heads read and closes lingered in the main loop (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Connections the poller holds for us, with their deadline: heads arriving (counted in
        # nr_conns) and closes lingering (no longer counted, as in gthread).
        self.parked: dict[Conn, float] = {}
        self.buffered = 0  # bytes held by the connections whose body the main loop read (`held`)
        self.serving = threading.local()  # the connection each thread serves (`serve`)
        hide_queries(self.log)  # a request is logged without its query (and token headers)

    def load_wsgi(self) -> None:
        """The app, served through `serve` on our own path (see _own_path)."""
        super().load_wsgi()
        self.app_wsgi = self.wsgi
        # gunicorn's lines redact the settings' tokens too (a token put in a hook's path)
        hide_queries(self.log, getattr(self.app_wsgi, "secret_values", ()))
        if self._own_path():
            self.wsgi = self.serve

    def serve(self, environ: dict, start_response: Any) -> Any:
        """The app, with SERVER_DRAINS in its environ; a body left to drain closes the
        connection (gunicorn's Response says so: `Connection: close`)."""
        conn = self.serving.conn
        environ[SERVER_DRAINS] = conn.drain_after_answer
        result = self.app_wsgi(environ, start_response)
        if conn.drain and hasattr(getattr(start_response, "__self__", None), "force_close"):
            start_response.__self__.force_close()
        return result

    def _own_path(self) -> bool:
        # TLS handshakes and the HTTP/2 preface are read by blocking calls in TConn.init(): with
        # either on, connections take gthread's own path (the chart terminates TLS at the
        # Ingress and speaks HTTP/1.1 to the pods).
        return not self.cfg.is_ssl and self.cfg.http2_cleartext == "off"

    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        if self.nr_conns >= self.worker_connections and self._own_path():
            self._make_room()
        self.enqueue_req(Conn(self, self.cfg, sock, client, listener.getsockname()))

    def _make_room(self) -> None:
        """At `worker_connections`, gthread stops accepting until a connection ends: as many
        idle ones, from anyone (half-open heads, or kept-alive after one GET), left every
        webhook in the listen backlog for up to their 5 s. Close the oldest head still
        arriving, else the oldest idle kept-alive connection (HTTP lets a server close an idle
        one at any time; RFC 9112 9.3), else the oldest body arriving (only token holders get
        that far: a push's body was closed for a newcomer's head), else the oldest drain of
        an answered body (`Conn.drain`); a connection a thread serves is never touched."""
        oldest = next((c for c in self.parked if c.head is not None and c.wait is None), None)
        if oldest is None and not self.keepalived_conns:
            oldest = next((c for c in self.parked if c.wait is not None), None) or next(
                (c for c in self.parked if c.head is None and c.drain), None)
        if oldest is not None and oldest.head is None:
            log.warning("idle client closed to make room", extra={
                "phase": "drain", "connections": self.worker_connections,
                "remote_addr": address(oldest.client)})
            self._unlinger(oldest)
        elif oldest is not None:
            self._unpark(oldest)
            log.warning("idle client closed to make room", extra={
                "phase": "head" if oldest.wait is None else "body",
                "connections": self.worker_connections, "remote_addr": address(oldest.client)})
            self._drop(oldest)
        elif self.keepalived_conns:
            idle = self.keepalived_conns.popleft()
            try:
                self.poller.unregister(idle.sock)
            except (KeyError, ValueError, OSError):
                pass
            log.warning("idle client closed to make room", extra={
                "phase": "keep-alive", "connections": self.worker_connections,
                "remote_addr": address(idle.client)})
            self.nr_conns -= 1
            idle.close()

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """gthread's, but an event is dispatched only while its socket is still registered as
        it was when polled: _make_room closes another connection from the accept's callback,
        and that connection's own event of the same poll (its next bytes) then reached a
        closed socket: `_unpark` or gthread's `poller.unregister` raised, and the worker died
        with every connection it held (a restart, each new connection at capacity a chance)."""
        try:
            events = self.poller.select(timeout)
            registered = self.poller.get_map()
            for key, _ in events:
                if registered.get(key.fd) is key:
                    key.data(key.fileobj)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise

    def enqueue_req(self, conn: Conn) -> None:
        """To a thread once the request's head is here (gthread: at once)."""
        if not self._own_path():
            return super().enqueue_req(conn)
        conn.head = bytearray(conn.parser.unreader.take_buffered() if conn.parser else b"")
        conn.sock.setblocking(False)
        state = self._head_state(conn, 0)
        if state is None:
            state = self._receive(conn)
        if state is None:
            self._park(conn, HEADER_READ_TIMEOUT_SECONDS, self._on_head_readable)
        else:
            self._settle(conn, state)

    @staticmethod
    def _head_state(conn: Conn, searched: int) -> str | None:
        """"complete", "too large", or None (more to come); the end is looked for from
        `searched` on (less the end's 3 bytes that may have come before), so a head sent a
        byte at a time is not searched from its start at each byte."""
        if conn.head.find(b"\r\n\r\n", max(searched - 3, 0)) >= 0:
            return "complete"
        return "too large" if len(conn.head) > HEAD_BUFFER_BYTES else None

    @staticmethod
    def _recv(conn: Conn) -> bytes | None:
        """One read without blocking: None when nothing is there, b"" when the client has
        gone."""
        try:
            return conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _receive(self, conn: Conn) -> str | None:
        """One read without blocking: the head's state after it, "gone" when the client has
        gone, None when more is to come."""
        data = self._recv(conn)
        if data is None:
            return None
        if not data:
            return "gone"
        searched = len(conn.head)
        conn.head += data
        return self._head_state(conn, searched)

    def _on_head_readable(self, conn: Conn, _sock: socket.socket) -> None:
        state = self._receive(conn)
        if state is None:
            return
        self._unpark(conn)
        self._settle(conn, state)

    def _settle(self, conn: Conn, state: str) -> None:
        if state == "complete":
            self._head_complete(conn)
        elif state == "too large":
            self._refuse_head(conn)
        else:
            self._drop(conn)

    def _refuse_head(self, conn: Conn) -> None:
        """431, as gunicorn's parser answers a head over its limits, then a lingering close."""
        log.warning("request head too large", extra={
            "bytes": len(conn.head), "limit": HEAD_BUFFER_BYTES,
            "remote_addr": address(conn.client)})
        self.nr_conns -= 1
        try:
            util.write_error(conn.sock, 431, "Request Header Fields Too Large",
                             f"The request head is over {HEAD_BUFFER_BYTES} bytes")
        except OSError:  # the answer does not fit the socket's buffer: closed all the same
            pass
        self.linger(conn)

    def _head_complete(self, conn: Conn) -> None:
        """To a thread, unless a body the app reads is still arriving: then read on here."""
        wait = self._body_wait(conn)
        if wait is None:
            return self._dispatch(conn)
        conn.wait, conn.body_deadline = wait, time.monotonic() + BODY_READ_TIMEOUT_SECONDS
        self._hold(conn, len(conn.head))
        if conn.continued:
            try:
                conn.sock.send(CONTINUE)
            except OSError:  # gone, or a full buffer: gunicorn's own, in the thread, then
                conn.continued = False
        self._park(conn, BODY_READ_TIMEOUT_SECONDS, self._on_body_readable)

    def _body_wait(self, conn: Conn) -> BodyWait | None:
        """The body to read here: one still arriving, that the app reads (`body_wanted`: a
        webhook with its token), within the app's limit and this worker's budget for them
        (BODIES_BUFFERED_BYTES); past either, the app reads it in a thread, as before."""
        wanted = getattr(self.app_wsgi, "body_wanted", None)
        end = conn.head.find(b"\r\n\r\n") + 4
        if wanted is None or arrived(conn.head, end):
            return None
        environ = head_environ(bytes(conn.head[:end - 4]))
        wait = body_wait(environ, end) if environ else None
        if wait is None or wait.complete(conn.head):
            return None
        limit = wanted(environ)
        expects = environ.get("HTTP_EXPECT", "").lower() == "100-continue" \
            and environ["SERVER_PROTOCOL"] == "HTTP/1.1"
        # Refused unread (no token) or a path that reads no body: its answer, not a 100 (RFC
        # 9110 10.1.1), to send the body. Past the limit, the app reads it on a thread in pieces
        # (service.trimmed_body), with no 100 either: one past what a sender sends is refused
        # unread, and a client that waits for a 100 sends after its own wait (curl's 1 s;
        # GitLab and the Jenkins plugin send no Expect).
        if limit is None or wait.over(conn.head, limit):
            conn.continued = expects
            return None
        if self.buffered + len(conn.head) > BODIES_BUFFERED_BYTES:
            return None
        conn.limit, conn.continued = limit, expects
        return wait

    def _on_body_readable(self, conn: Conn, _sock: socket.socket) -> None:
        data = self._recv(conn)
        if data is None:
            return
        conn.head += data
        self._hold(conn, len(data))
        if data and not conn.wait.complete(conn.head) and not conn.wait.over(
                conn.head, conn.limit) and self.buffered <= BODIES_BUFFERED_BYTES:
            return
        self._unpark(conn)  # complete, gone (400), or past a limit: the app answers
        self._dispatch(conn)

    def _dispatch(self, conn: Conn) -> None:
        conn.data_ready = True  # gthread's handle() then waits for nothing
        conn.init()  # a new connection's parser (plain HTTP/1: no read); a kept-alive one has it
        unreader = conn.parser.unreader
        if not isinstance(unreader.sock, DeadlineReader):
            unreader.sock = DeadlineReader(conn.sock, conn.client)
        unreader.sock.start("head", HEADER_READ_TIMEOUT_SECONDS)  # (complete: never waited on)
        wait = conn.wait
        if wait is not None and (wait.end is None or len(conn.head) <= wait.end):
            unreader.unread(bytes(conn.head[:wait.start]))  # the body after it, as read
            del conn.head[:wait.start]
            unreader.sock.give(conn.head)
        else:  # all the head, or (pipelined) the next request's bytes after the body
            unreader.unread(bytes(conn.head))
        conn.head = conn.wait = None
        super().enqueue_req(conn)

    def _drop(self, conn: Conn) -> None:
        self._release(conn)
        self.nr_conns -= 1
        util.close(conn.sock)

    def _hold(self, conn: Conn, size: int) -> None:
        conn.held += size
        self.buffered += size

    def _release(self, conn: Conn) -> None:
        """The body's bytes, out of the budget: its request is done, or it was closed. Handed to
        the thread pool they still count, as they wait there in memory for a free thread (when
        they stopped counting there, with every thread held by a slow Redis, bodies of up to
        the limit each queued for as many connections as the worker takes)."""
        self.buffered -= conn.held
        conn.held = 0

    def finish_request(self, conn: Conn, fs: Any) -> None:
        self._release(conn)
        super().finish_request(conn, fs)

    def _park(self, conn: Conn, seconds: float, callback: Any) -> None:
        self.parked[conn] = time.monotonic() + seconds
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(callback, conn))

    def _unpark(self, conn: Conn) -> None:
        del self.parked[conn]
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def murder_pending(self) -> None:
        """gthread's (connections that sent nothing), then ours past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, deadline in self.parked.items() if deadline <= now]:
            self._unpark(conn)
            if conn.wait is not None:  # the body's deadline: the app answers 408
                self._dispatch(conn)
            elif conn.head is not None:
                cut_off("head", HEADER_READ_TIMEOUT_SECONDS, conn.client)
                self._drop(conn)
            else:
                self._unlinger(conn, parked=False)

    def linger(self, conn: Conn) -> None:
        """Close as util.close_graceful does (FIN, then read until the client's end closes),
        with the reads in the poller instead of a blocking loop; a body the app left to drain
        (`Conn.drain`) is read too, within the body's deadline, and counts as a connection
        (nr_conns): gthread's graceful stop waits for those, and the worker exited under a
        drain, the client (GitLab, still sending) reset, a failed delivery."""
        conn.head = conn.wait = None
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            util.close(conn.sock)
            return
        self.nr_conns += 1 if conn.drain else 0
        self._park(conn, BODY_READ_TIMEOUT_SECONDS if conn.drain else CLOSE_LINGER_SECONDS,
                   self._on_linger_readable)

    def _unlinger(self, conn: Conn, parked: bool = True) -> None:
        if parked:
            self._unpark(conn)
        self.nr_conns -= 1 if conn.drain else 0
        util.close(conn.sock)

    def _on_linger_readable(self, conn: Conn, sock: socket.socket) -> None:
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if not data or conn.lingered >= conn.drain + CLOSE_LINGER_BYTES:
            self._unlinger(conn)

    def handle_request(self, req: Any, conn: Conn) -> bool:
        self.serving.conn, conn.drain = conn, 0
        reader = conn.parser.unreader.sock
        if isinstance(reader, DeadlineReader):  # from the head, when the main loop read it
            reader.start("body", BODY_READ_TIMEOUT_SECONDS, conn.body_deadline)
        conn.body_deadline = None
        if conn.continued:  # answered, or not due: gunicorn's wsgi.create would send one
            req._expected_100_continue = conn.continued = False
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Conn, keepalive: bool) -> bool:
        """Keep the connection only if what is left of the body is here already: a thread
        never waits for a body the app did not read (gthread waits up to 5 s)."""
        if not keepalive:
            return False
        conn.sock.setblocking(False)  # a read with nothing there raises: the rest is not here
        try:
            return bool(conn.parser.finish_body(max_bytes=DRAIN_BYTES))
        except (BlockingIOError, InterruptedError, ReadTimedOut):
            return False

"""How the web's gunicorn worker writes an answer (service.http_worker.HeldHead), with gunicorn's
own request parser and Response on a real socket pair: a head and a short body go out in one
send; an answer without a body, and an interim 100 Continue, are still sent."""

import socket

from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from service.http_worker import HeldHead


class Recorded(socket.socket):
    """A real socket that notes what each sendall and send was given."""

    def __init__(self, fileno: int):
        super().__init__(fileno=fileno)
        self.sent: list[bytes] = []

    def sendall(self, data, *args):
        self.sent.append(bytes(data))
        return super().sendall(data, *args)

    def send(self, data, *args):
        self.sent.append(bytes(data))
        return super().send(data, *args)


def answer(request: bytes, status: str, headers: list[tuple[str, str]], body: bytes
           ) -> tuple[Recorded, bytes]:
    """The request parsed and answered by gunicorn through HeldHead, as the worker does; the
    server's socket and what the client received."""
    client, server = socket.socketpair()
    ours = Recorded(server.detach())
    with client, ours:
        client.sendall(request)
        cfg = Config()
        req = next(RequestParser(cfg, ours, ("127.0.0.1", 1)))
        held = HeldHead(ours)
        resp, _environ = wsgi.create(req, held, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
        resp.start_response(status, headers)
        if body:
            resp.write(body)
        resp.close()
        held.flush()
        ours.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return ours, received


def test_a_head_and_its_short_body_go_out_in_one_send():
    ours, received = answer(b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                            "202 Accepted", [("Content-Type", "application/json"),
                                             ("Content-Length", "17")], b'{"status":"ok"}\r\n')
    assert len(ours.sent) == 1  # gunicorn alone sends the head, then the body
    assert ours.sent[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert ours.sent[0].endswith(b'\r\n\r\n{"status":"ok"}\r\n')
    assert received == ours.sent[0]


def test_an_answer_without_a_body_is_sent_at_the_end():
    ours, received = answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "204 No Content", [], b"")
    assert len(ours.sent) == 1 and received.startswith(b"HTTP/1.1 204 No Content\r\n")


def test_a_100_continue_is_sent_at_once_and_the_answer_after_it():
    ours, received = answer(b"POST /webhooks/gitlab HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                            b"Expect: 100-continue\r\n\r\n{}", "200 OK",
                            [("Content-Length", "2")], b"{}")
    assert ours.sent[0] == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is read
    assert len(ours.sent) == 2 and ours.sent[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\n{}")

"""The main loop's reading of a head for the end of its body (service.body_wait): where a body
ends, as gunicorn's parser will read it, or a sign that it is not one to wait for."""

import pytest

from service.body_wait import arrived, body_wait, chunked_end, head_environ

HEAD = (b"POST /webhooks/jenkins?token=t%20x&a=1 HTTP/1.1\r\nHost: x\r\n"
        b"X-Gitlab-Token: secret \r\nX_Gitlab_Token: smuggled\r\nX-Many: a\r\nX-Many: b")


def test_a_head_reads_as_its_wsgi_environ():
    environ = head_environ(HEAD)
    assert environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/webhooks/jenkins"
    assert environ["QUERY_STRING"] == "token=t%20x&a=1"
    assert environ["HTTP_X_GITLAB_TOKEN"] == "secret"  # gunicorn drops the one with "_"
    assert environ["HTTP_X_MANY"] == "a,b"


@pytest.mark.parametrize("line", [b"GET /", b"GET / HTTP/2.0", b"PRI * HTTP/2.0 x"])
def test_a_head_that_is_not_http1_is_not_read(line):
    assert head_environ(line + b"\r\nHost: x") is None


@pytest.mark.parametrize("body, end", [
    (b"5\r\nhello\r\n0\r\n\r\n", 15),
    (b"5;ext=1\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1", 21),  # the next request's bytes after
    (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", 29),
    (b"5\r\nhel", None),
    (b"5\r\nhello\r\n0\r\n", None),
    (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n", None),
    (b"zz\r\nhello\r\n", 0),  # not a chunk size: ends here, the parser answers 400
    (b"1" * 5000, 0),  # a chunk-size line without its end
    (b"0\r\n" + b"X: 1\r\n" * 20000, 0),  # trailers without their end, past TRAILER_BYTES
    (b"0\r\n" + b"X: 1\r\n" * 100, None),
])
def test_a_chunked_body_ends_where_its_last_chunk_and_trailers_end(body, end):
    assert chunked_end(bytearray(body), 0)[0] == end


def test_a_chunked_body_is_scanned_on_from_its_last_whole_chunk():
    buffer = bytearray(b"HEAD3\r\nabc\r\n4\r\nde")
    end, scanned = chunked_end(buffer, 4)
    assert (end, scanned) == (None, 12)
    buffer += b"fg\r\n0\r\n\r\n"
    assert chunked_end(buffer, scanned)[0] == len(buffer)


@pytest.mark.parametrize("head, here, expected", [
    (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n", 10, True),
    (b"POST / HTTP/1.1\r\ncontent-length:10\r\n\r\n", 9, False),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 100, False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, True),
])
def test_a_body_has_arrived_when_the_buffer_holds_its_length(head, here, expected):
    assert arrived(bytearray(head + b"x" * here), len(head)) is expected


def test_a_body_wait_ends_at_its_length_and_knows_its_limit():
    head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n"
    wait = body_wait(head_environ(head[:-4]), len(head))
    buffer = bytearray(head + b"x" * 4)
    assert not wait.complete(buffer) and not wait.over(buffer, 10) and wait.over(buffer, 9)
    assert wait.complete(buffer + b"y" * 6)
    assert body_wait(head_environ(b"POST / HTTP/1.1\r\nContent-Length: x"), 0) is None

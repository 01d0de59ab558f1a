"""What the web worker's main loop waits for before it hands a request to a thread: the end of
its body (service.http_worker). A complete head is read here for its framing, its path and the
headers a route's token check reads, as a minimal WSGI environ.

Nothing here decides an answer: gunicorn's parser, in the thread, parses the request again and
the app reads the body. A head or a chunked body this scan reads otherwise than gunicorn only
sends the request to a thread sooner (or at the body's deadline), where it is read as before.
"""

import re
from dataclasses import dataclass
from urllib.parse import unquote

# The environ's callable, from the web worker (service.http_worker), that takes the rest of a
# body of known length to read and drop after the answer, off the app's thread (service.edge).
# Here, not in service.edge: the gunicorn master imports the worker class, and service.edge
# imports the metrics, whose values made in the master are files named by the master's pid that
# every forked worker then wrote into, none making its own.
SERVER_DRAINS = "ci_autoscaler.drain_after_answer"
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,18})[ \t]*\r\n", re.I)
# A Content-Length this scan reads: str.isdigit() takes latin-1's superscripts ("²") and
# int() refuses them, and more than 4300 digits (int_max_str_digits); past 18 it is past any limit.
_DIGITS = re.compile(r"[0-9]{1,18}")
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:", re.I)
# A chunk-size line longer than this without its end is not a chunk-size line.
CHUNK_LINE_BYTES = 4096
# Trailers this long without their end end the scan (to a thread, where gunicorn reads them):
# they were scanned line by line from the last chunk at each read, and a token holder sending
# a body's worth of short trailer lines a few bytes at a time kept the main loop busy. GitLab
# and the Jenkins Notification plugin send none.
TRAILER_BYTES = 64 * 1024


@dataclass
class BodyWait:
    """A body still arriving: `end`, where it ends in the connection's buffer when known
    (a Content-Length); else chunked, scanned from `scanned` (the next chunk-size line)."""
    start: int  # where the body starts: just past the head
    end: int | None
    scanned: int

    def over(self, buffer: bytearray, limit: int) -> bool:
        """Whether the body is past `limit` bytes: its length says so, or (chunked) as many
        bytes of it as that have come, its chunks' framing counted."""
        return (self.end if self.end is not None else len(buffer)) - self.start > limit

    def complete(self, buffer: bytearray) -> bool:
        if self.end is None:
            self.end, self.scanned = chunked_end(buffer, self.scanned)
        return self.end is not None and len(buffer) >= self.end


def arrived(buffer: bytearray, start: int) -> bool:
    """Whether the body that starts at `start` (past the head) is all in the buffer, by a
    search of the head: a push's head and body come in one read, and this is a tenth of what
    reading the head takes (head_environ). False when it cannot say (chunked)."""
    if _TRANSFER_ENCODING.search(buffer, 0, start):
        return False
    length = _LENGTH.search(buffer, 0, start)
    return length is None or len(buffer) - start >= int(length[1])


def head_environ(head: bytes) -> dict[str, str] | None:
    """The request line and headers of a complete head (up to its blank line) as WSGI names
    them; None when it is not an HTTP/1 head this scan reads."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    path, _, query = parts[1].partition("?")
    environ = {"REQUEST_METHOD": parts[0], "PATH_INFO": unquote(path), "QUERY_STRING": query,
               "SERVER_PROTOCOL": parts[2]}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or "_" in name:  # gunicorn drops a name with "_" (header_map)
            continue
        key = "HTTP_" + name.strip().upper().replace("-", "_")
        value = value.strip(" \t")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def body_wait(environ: dict[str, str], start: int) -> BodyWait | None:
    """The wait for the body that starts at `start` in the buffer; None when the head says
    there is none (or gives a Content-Length the parser refuses: 400)."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return BodyWait(start, None, start)
    length = environ.get("HTTP_CONTENT_LENGTH", "")
    if not _DIGITS.fullmatch(length) or int(length) == 0:
        return None
    return BodyWait(start, start + int(length), start)


def chunked_end(buffer: bytearray, pos: int) -> tuple[int | None, int]:
    """(where a chunked body that starts its next chunk at `pos` ends, or None while it is
    still arriving; where to scan from next time). A chunk-size that is not one ends the scan
    there: the parser refuses it (400)."""
    while True:
        eol = buffer.find(b"\r\n", pos, pos + CHUNK_LINE_BYTES)
        if eol < 0:
            return (None, pos) if len(buffer) - pos < CHUNK_LINE_BYTES else (pos, pos)
        size = bytes(buffer[pos:eol]).split(b";", 1)[0].strip(b" \t")
        if not _HEX.fullmatch(size):
            return pos, pos
        if int(size, 16) == 0:  # the last chunk: trailer lines up to a blank one
            end = buffer.find(b"\r\n\r\n", eol, eol + TRAILER_BYTES)
            if end >= 0:
                return end + 4, pos
            return (None, pos) if len(buffer) - eol < TRAILER_BYTES else (pos, pos)
        nxt = eol + 2 + int(size, 16) + 2
        if len(buffer) < nxt:
            return None, pos
        pos = nxt

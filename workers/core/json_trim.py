"""A JSON object body, read a piece at a time, trimmed to the members a spec names. Pure.

A webhook body past the web's limit is not refused for its size alone: a real GitLab push of
20 commits can be larger (each commit lists its message, which has no bound, and its added,
modified and removed files: a commit that vendors a tree lists every path of it; GitLab's own
bound is its 25 MB delivery), and the Jenkins Notification plugin's COMPLETED carries the
run's log lines (its endpoint's "Log" setting), artifacts and changed files. Such a body was
answered 200 ignored (a push: lost, GitLab never sends it again) or 413 (a COMPLETED: lost,
the plugin ignores our answer). It is read here instead, as it arrives, and only the members
the parser reads (workers.core.push_payload, notification_payload) are kept: a request costs
the pieces and the kept members, never the body.

A spec is a dict of member names (bytes, as sent) to True (the value kept as it is) or to a
spec (an object value trimmed the same way; any other value kept as it is). What the spec
does not name is skipped, its strings and nesting followed and its UTF-8 checked (as a
parser would refuse it), its other syntax not; what is kept is parsed after, as any body is.
"""

import codecs
import re

from workers.core.errors import InvalidPayload

Spec = dict[bytes, "bool | Spec"]

_WS = re.compile(rb"[ \t\r\n]*+")
# Inside a value: a run of what is neither a bracket nor the start of an unfinished string,
# complete strings and arrays or objects with nothing nested in them included (a commit's
# author and file lists, an artifact's URLs), taken in one step (possessive: no backtracking,
# whatever its size). The brackets left are followed one at a time, up to MAX_STEPS.
_STR = rb'"(?:[^"\\]++|\\.)*+"'
_FLAT = rb'[\[{](?:[^"{}\[\]]++|' + _STR + rb')*+[\]}]'
_RUN = re.compile(rb'(?:[^"{}\[\]]++|' + _STR + rb'|' + _FLAT + rb')*+', re.S)
_STRING_REST = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_SCALAR = re.compile(rb"[^,}\] \t\r\n]*+")
_MAX_KEY_BYTES = 256  # a longer member name is no name a spec holds
# Brackets, and members of the objects selected from, followed one at a time (3 us each here: a
# third of a second): a real push has a few brackets per commit and some 20 members at its top, a
# COMPLETED a few in all (its artifacts, changed files and failed tests are flat lists and
# objects, taken by _RUN); a body of `[[[]]],...` or `{"a":1,"a":1,...}` past this is no
# delivery of theirs, and 25 MiB of either held a web thread for 25 s and 16 s.
MAX_STEPS = 100_000


class TrimmedTooLarge(Exception):
    """The members kept are past the bound: no real delivery's are."""


def _not_json(what: str) -> InvalidPayload:
    return InvalidPayload(f"body is not valid JSON: {what}")


class Trimmer:
    """Feed the body's pieces in order (`feed`), then take the trimmed body (`close`).
    Raises InvalidPayload when the body is no JSON object, TrimmedTooLarge past `limit`."""

    def __init__(self, spec: Spec, limit: int):
        self.spec_root, self.limit = spec, limit
        self.out = bytearray()
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        # the objects being selected from, innermost last: [spec, members kept so far]
        self.frames: list[list] = []
        self.state = "root"  # root, key_or_end, key, colon, value, after_value, done
        self.key = bytearray()
        # a value being kept or skipped: "keep", "skip" or None; its nesting and string state
        self.value: str | None = None
        self.depth, self.in_string, self.escape, self.scalar = 0, False, False, False
        self.steps = 0  # brackets and members followed one at a time (MAX_STEPS)

    def feed(self, data: bytes) -> None:
        if not data.isascii():
            try:
                self.utf8.decode(data)
            except UnicodeDecodeError:
                raise _not_json("it is not UTF-8") from None
        i = 0
        while i < len(data):
            i = self._value(data, i) if self.value is not None else self._member(data, i)

    def close(self) -> bytes:
        try:
            self.utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise _not_json("it is not UTF-8") from None
        if self.state != "done":
            raise _not_json("the body ended before its object did")
        return bytes(self.out)

    def _emit(self, data: bytes | memoryview) -> None:
        self.out += data
        if len(self.out) > self.limit:
            raise TrimmedTooLarge(f"the fields read are over {self.limit} bytes")

    def _member(self, data: bytes, i: int) -> int:
        """One step of the object being selected from (or of the root, or the end)."""
        if self.state == "key":
            return self._key(data, i)
        i = _WS.match(data, i).end()
        if i >= len(data):
            return i
        c = data[i:i + 1]
        if self.state == "root":
            if c != b"{":
                raise InvalidPayload("body must be a JSON object")
            self.frames.append([self.spec_root, 0])
            self._emit(b"{")
            self.state = "key_or_end"
        elif self.state == "done":
            raise _not_json("data after the object")
        elif c == b"}" and self.state in ("key_or_end", "after_value"):
            self._emit(b"}")
            self.frames.pop()
            self.state = "after_value" if self.frames else "done"
        elif self.state == "key_or_end" and c == b'"':
            self.key.clear()
            self.state = "key"
        elif self.state == "after_value" and c == b",":
            self.state = "key_or_end"
        elif self.state == "colon" and c == b":":
            self.state = "value"
        elif self.state == "value":
            self._start_value(c)
            return i if self.value is not None else i + 1
        else:
            raise _not_json(f"unexpected {c!r} in an object")
        return i + 1

    def _key(self, data: bytes, i: int) -> int:
        """A member's name, to its closing quote (kept as sent, escapes and all, up to a
        bound)."""
        if self.escape:  # the byte a backslash that ended the last piece escapes
            self._key_add(data[i:i + 1])
            self.escape = False
            return i + 1
        end = _STRING_REST.match(data, i).end()
        self._key_add(data[i:end])
        if end >= len(data):
            return end
        if data[end] == 0x5C:  # a backslash, the piece's last byte
            self._key_add(b"\\")
            self.escape = True
        else:
            self.state = "colon"
        return end + 1

    def _key_add(self, part: bytes) -> None:
        if len(self.key) <= _MAX_KEY_BYTES:
            self.key += part[:_MAX_KEY_BYTES + 1 - len(self.key)]

    def _step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TrimmedTooLarge(f"the body has more than {MAX_STEPS} arrays, objects and "
                                  "members of the objects read")

    def _start_value(self, c: bytes) -> None:
        self._step()  # a member of an object selected from
        frame = self.frames[-1]
        want = frame[0].get(bytes(self.key)) if len(self.key) <= _MAX_KEY_BYTES else None
        self.state = "after_value"
        if not want:
            self.value = "skip"
        else:
            self._emit((b',"' if frame[1] else b'"') + bytes(self.key) + b'":')
            frame[1] += 1
            if isinstance(want, dict) and c == b"{":
                self._emit(b"{")
                self.frames.append([want, 0])
                self.state = "key_or_end"
                return  # the brace is taken by the caller
            self.value = "keep"
        self.depth, self.in_string, self.escape = 0, False, False
        self.scalar = c not in b'"{['

    def _value(self, data: bytes, i: int) -> int:
        """Follow the value being kept or skipped from `i` to its end or the piece's."""
        start, done = i, False
        n = len(data)
        while i < n and not done:
            if self.escape:
                i, self.escape = i + 1, False
            elif self.in_string:
                i = _STRING_REST.match(data, i).end()
                if i < n:
                    if data[i] == 0x5C:  # a backslash at the piece's end
                        self.escape = True
                    else:
                        self.in_string = False
                        done = self.depth == 0
                    i += 1
            elif self.scalar:
                i = _SCALAR.match(data, i).end()
                done = i < n
            else:
                i = _RUN.match(data, i).end() if self.depth else i
                if i < n:
                    c = data[i]
                    i += 1
                    if c == 0x22:  # '"': a string that goes on past this piece
                        self.in_string = True
                    elif c in (0x7B, 0x5B):
                        self.depth += 1
                        self._step()
                    else:
                        self.depth -= 1
                        if self.depth < 0:
                            raise _not_json("a bracket closes what was not opened")
                        done = self.depth == 0
        if self.value == "keep":
            self._emit(data[start:i])
        if done:
            self.value = None
        return i

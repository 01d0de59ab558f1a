"""One Lua script, called on connections of its own: the webhook's one round trip to Redis.

redis-py's client call takes a connection from the pool, encodes each argument in Python, runs
the retry wrapper and gives the connection back: about 30 us of CPU a call more than packing
the command in C (hiredis) and sending it on a connection the caller holds, and twice that for
a script with forty arguments (bench/results/ingest.md). The connections are made with the
client's own settings (address, TLS, password, timeouts), one per thread that calls at the same
time, and made again in a forked child (gunicorn forks its workers after the app is built).

Errors are the client's: a lost connection is tried once more at once (one that went stale when
Redis restarted), a timeout is not; both raise redis.RedisError to the caller. A Redis that
forgot the script (a restart, SCRIPT FLUSH) gets its source once (EVAL), as redis-py's Script
does.

With `wait=(replicas, milliseconds)`, a WAIT follows the script in the same round trip, and a
call whose writes reached fewer replicas in that time raises NotReplicated (with Sentinel, a
write only the master holds is lost if the master dies before replicating it).

A Library of functions (FUNCTION LOAD, FCALL) serves the web, whose Redis user may not
run scripts of its own.
"""

import hashlib
import os
from contextlib import contextmanager
from typing import Any, Callable, Sequence

import hiredis
import redis
from redis.exceptions import NoScriptError

from workers.core.errors import RetryableError


class NotReplicated(redis.RedisError):
    """The script ran on the master, but WAIT saw fewer replicas acknowledge it in time."""


class ScriptCall:
    def __init__(self, client: redis.Redis, source: str,
                 wait: tuple[int, int] | None = None):
        self.source = source
        self._wait = hiredis.pack_command(("WAIT", *wait)) if wait and wait[0] > 0 else None
        self._replicas = wait[0] if wait else 0
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pool = client.connection_pool
        self._idle: list[Any] = []  # connections not in use; list.pop/append are atomic
        self._pid = os.getpid()

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's answer; raises redis.RedisError (ConnectionError, TimeoutError, or the
        script's own ResponseError)."""
        return self._on_a_connection(lambda connection: self._evalsha(connection, keys, args))

    def _on_a_connection(self, send: Callable[[Any], Any]) -> Any:
        """`send(connection)`'s answer, on an idle connection of ours (or a new one), tried once
        more afresh when the connection was lost (stale, or Redis restarted)."""
        if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
            self._idle, self._pid = [], os.getpid()
        connection = self._idle.pop() if self._idle else self._connect()
        try:
            try:
                answer = send(connection)
            except redis.ConnectionError:  # stale, or Redis restarted: once more, afresh
                connection.disconnect()
                answer = send(connection)
        except BaseException:
            connection.disconnect()  # a reply may be left unread: never reuse it
            raise
        self._idle.append(connection)
        return answer

    def many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """The script run once per (keys, args), all sent in one write and read back in one
        round trip (a pipeline). Each answer in order; a call the script failed gives its
        redis.ResponseError in its place. A lost connection raises, as a single call does:
        the caller cannot tell which calls ran, so each must be safe to run again."""
        if not calls:
            return []
        return self._on_a_connection(lambda connection: self._evalsha_many(connection, calls))

    def _evalsha_many(self, connection: Any, calls: Sequence[tuple[Sequence[Any],
                                                                  Sequence[Any]]]) -> list[Any]:
        connection.send_packed_command(
            [hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args))
             for keys, args in calls], check_health=False)
        answers: list[Any] = []
        for _ in calls:
            try:
                answers.append(connection.read_response())
            except redis.ResponseError as err:  # NoScriptError is one: every reply is read
                answers.append(err)
        if any(isinstance(a, NoScriptError) for a in answers):  # Redis forgot it: once, EVAL
            again = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
            connection.send_packed_command(
                [hiredis.pack_command(("EVAL", self.source, len(calls[i][0]), *calls[i][0],
                                       *calls[i][1])) for i in again], check_health=False)
            for i in again:
                try:
                    answers[i] = connection.read_response()
                except redis.ResponseError as err:
                    answers[i] = err
        return answers

    def _connect(self) -> Any:
        return self._pool.connection_class(**self._pool.connection_kwargs)

    def _evalsha(self, connection: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        # connect() itself (a no-op once connected): a Sentinel-managed connection asks the
        # sentinels for the master there, while send_packed_command's own connect goes to
        # the default localhost:6379 (redis-py 8.1), which may be another Redis.
        connection.connect()
        wait = [self._wait] if self._wait is not None else []
        connection.send_packed_command(
            [hiredis.pack_command(("EVALSHA", self.sha, len(keys), *keys, *args)), *wait],
            check_health=False)
        try:
            answer = connection.read_response()
        except NoScriptError:
            if wait:
                connection.read_response()  # the WAIT's reply, before the next command
            connection.send_packed_command(
                [hiredis.pack_command(("EVAL", self.source, len(keys), *keys, *args)), *wait],
                check_health=False)
            answer = connection.read_response()
        if wait and (acked := int(connection.read_response())) < self._replicas:
            raise NotReplicated(f"{acked} of {self._replicas} replica(s) acknowledged in time")
        return answer


class Library:
    """Lua functions loaded into Redis once (FUNCTION LOAD) and called by name (FCALL).

    The web process runs as a Redis user that may FCALL but not EVAL, SCRIPT or FUNCTION LOAD
    (helm chart, redisWebAcl): it can run our functions and nothing it wrote itself, and each
    command inside one is checked against its key patterns as if it had sent it. The worker
    loads the library when it starts (a Redis 7 function is kept in the RDB and the AOF, and
    copied to replicas, unlike a script cache); a process allowed to load it does so itself when
    Redis does not have it. The library's name and its functions' names carry a digest of their
    code, so two versions of the service side by side each call their own."""

    def __init__(self, name: str, functions: dict[str, str]):
        """`functions`: name -> Lua body, which reads KEYS and ARGV as a script does."""
        body = "\n".join(f"redis.register_function('{fn}_DIGEST', function(KEYS, ARGV)\n{code}"
                         "\nend)" for fn, code in sorted(functions.items()))
        self.digest = hashlib.sha1(body.encode()).hexdigest()[:12]
        self.name = f"{name}_{self.digest}"
        self.code = f"#!lua name={self.name}\n" + body.replace("_DIGEST", f"_{self.digest}")

    def function(self, name: str) -> str:
        return f"{name}_{self.digest}"

    def load(self, client: Any) -> bool:
        """Load the library unless Redis has it (True if this call loaded it). `client` is a
        redis.Redis or one of its connections; raises redis.RedisError (NoPermissionError for a
        user that may not load functions)."""
        try:
            if isinstance(client, redis.Redis):
                client.function_load(self.code)
            else:
                client.send_command("FUNCTION", "LOAD", self.code)
                client.read_response()
        except redis.ResponseError as err:
            if "already exists" in str(err):
                return False
            raise
        return True


class FunctionCall(ScriptCall):
    """One function of a Library, called as ScriptCall calls a script (FCALL instead of
    EVALSHA); when Redis does not have the function (a Redis that lost its data), the library is
    loaded once, which fails with NoPermissionError for the web's user: the caller answers 503
    until a worker has loaded it again."""

    def __init__(self, client: redis.Redis, library: Library, name: str,
                 wait: tuple[int, int] | None = None):
        super().__init__(client, library.code, wait=wait)
        self.library, self.function = library, library.function(name)

    def _evalsha(self, connection: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        connection.connect()  # with Sentinel: the master (see ScriptCall._evalsha)
        wait = [self._wait] if self._wait is not None else []
        command = hiredis.pack_command(("FCALL", self.function, len(keys), *keys, *args))
        connection.send_packed_command([command, *wait], check_health=False)
        try:
            answer = connection.read_response()
        except redis.ResponseError as err:
            if "Function not found" not in str(err):
                raise  # the caller drops this connection, the WAIT's reply unread
            if wait:
                connection.read_response()  # the WAIT's reply, before the next command
            self.library.load(connection)
            connection.send_packed_command([command, *wait], check_health=False)
            answer = connection.read_response()
        if wait and (acked := int(connection.read_response())) < self._replicas:
            raise NotReplicated(f"{acked} of {self._replicas} replica(s) acknowledged in time")
        return answer


class FunctionBatch(ScriptCall):
    """Calls of a Library's functions, any mix of them, sent in one write and read back in one
    round trip (a pipeline), with one WAIT after the last: Redis runs them in order, as one at
    a time, and with appendfsync always fsyncs its AOF once for the lot, not once a call (the
    spool drainer's batch, bench/results/spool-drain.md)."""

    def __init__(self, client: redis.Redis, library: Library,
                 wait: tuple[int, int] | None = None):
        super().__init__(client, library.code, wait=wait)
        self.library = library

    def __call__(  # type: ignore[override]
            self, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Each (function, keys, args)'s answer in order; a call Redis refused gives its
        redis.ResponseError in its place. A lost connection raises, as a single call does (the
        calls are sent once more first, afresh): the caller cannot tell which ran, so each must
        be safe to run again; so does NotReplicated, when the WAIT saw fewer replicas than
        asked acknowledge the batch's writes in time (read as: none of them replicated)."""
        if not calls:
            return []
        return self._on_a_connection(lambda connection: self._fcall_many(connection, calls))

    def _fcall_many(self, connection: Any, calls: Sequence[tuple[str, Sequence[Any],
                                                                 Sequence[Any]]]) -> list[Any]:
        connection.connect()  # with Sentinel: the master (see ScriptCall._evalsha)
        commands = [hiredis.pack_command(("FCALL", self.library.function(name), len(keys),
                                          *keys, *args)) for name, keys, args in calls]
        answers, acked = self._send(connection, commands)
        # Redis lost the library (a data loss): loaded once (NoPermissionError for the web's
        # user, raised), and the calls it refused for it sent again.
        again = [i for i, a in enumerate(answers)
                 if isinstance(a, redis.ResponseError) and "Function not found" in str(a)]
        if again:
            self.library.load(connection)
            redone, acked = self._send(connection, [commands[i] for i in again])
            for i, answer in zip(again, redone):
                answers[i] = answer
        if acked is not None and acked < self._replicas:
            raise NotReplicated(f"{acked} of {self._replicas} replica(s) acknowledged the "
                                "batch in time")
        return answers

    def _send(self, connection: Any, commands: list[bytes]) -> tuple[list[Any], int | None]:
        """The commands' answers (an error answer in its place) and, with a WAIT after them,
        how many replicas acknowledged every write so far on this connection."""
        wait = [self._wait] if self._wait is not None else []
        connection.send_packed_command([*commands, *wait], check_health=False)
        answers: list[Any] = []
        for _ in commands:
            try:
                answers.append(connection.read_response())
            except redis.ResponseError as err:
                answers.append(err)
        return answers, int(connection.read_response()) if wait else None


@contextmanager
def retryable():
    """Redis errors as RetryableError (the caller's task or pass is tried again)."""
    try:
        yield
    except redis.RedisError as err:
        raise RetryableError(f"redis unavailable: {type(err).__name__}") from err

"""ScriptCall on a real redis-server: its own connections, kept across calls, made again after a
fork, a lost connection tried once more, a timeout not, a forgotten script sent again."""

import multiprocessing
import threading

import pytest
import redis

from workers.adapters.redis_script import ScriptCall

ECHO = "redis.call('INCR', KEYS[1]) return ARGV[1]"


def client_ids(conn: redis.Redis) -> set[int]:
    return {c["id"] for c in conn.client_list()}


def test_calls_share_one_connection_of_their_own(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    before = client_ids(redis_conn)
    assert [script(["n"], [f"v{i}"]) for i in range(5)] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert len(client_ids(redis_conn) - before) == 1  # one new connection for all five calls
    assert redis_conn.get("n") == b"5"


def test_a_redis_that_forgot_the_script_is_sent_its_source(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    script(["n"], ["a"])
    redis_conn.script_flush()
    assert script(["n"], ["b"]) == b"b"
    assert redis_conn.script_exists(script.sha) == [True]


def test_a_killed_connection_is_tried_once_more_at_once(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    before = client_ids(redis_conn)
    script(["n"], ["a"])
    ours = client_ids(redis_conn) - before
    assert len(ours) == 1
    redis_conn.client_kill_filter(_id=ours.pop())
    assert script(["n"], ["b"]) == b"b"
    assert redis_conn.get("n") == b"2"  # the call ran once, not twice


def test_a_timeout_raises_and_the_connection_is_not_reused(redis_url, redis_conn):
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    slow = ScriptCall(client, "local t = redis.call('TIME') local until_us = t[1] * 1e6 + t[2]"
                              " + ARGV[1] repeat t = redis.call('TIME')"
                              " until t[1] * 1e6 + t[2] >= until_us return ARGV[2]")
    with pytest.raises(redis.TimeoutError):
        slow([], [500_000, "late"])  # a 0.5 s script against a 0.2 s socket timeout
    assert redis_conn.ping()  # (no timeout on this client: it waits for the script to end)
    # the late reply of the first call must not be read as the answer of the next one
    assert slow([], [0, "next"]) == b"next"


def test_concurrent_threads_each_get_their_own_answer(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    answers: dict[int, list[bytes]] = {}

    def run(t: int) -> None:
        answers[t] = [script(["n"], [f"{t}-{i}"]) for i in range(200)]

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answers[t] == [f"{t}-{i}".encode() for i in range(200)] for t in range(4))
    assert redis_conn.get("n") == b"800"


def _child(script: ScriptCall, out) -> None:
    out.send([script(["n"], [f"child-{i}"]) for i in range(50)])


def test_a_forked_child_makes_its_own_connection(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    script(["n"], ["parent"])  # the parent holds a connection when it forks, as gunicorn's does
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_child, args=(script, sender))
    child.start()
    parent_answers = [script(["n"], [f"parent-{i}"]) for i in range(50)]
    child_answers = receiver.recv()
    child.join(timeout=10)
    assert child.exitcode == 0
    assert child_answers == [f"child-{i}".encode() for i in range(50)]
    assert parent_answers == [f"parent-{i}".encode() for i in range(50)]


def test_many_calls_go_in_one_round_trip_and_answer_in_order(redis_conn):
    script = ScriptCall(redis_conn, ECHO)
    redis_conn.config_resetstat()
    answers = script.many([(["n"], [f"v{i}"]) for i in range(50)])
    assert answers == [f"v{i}".encode() for i in range(50)]
    assert redis_conn.get("n") == b"50"
    stats = redis_conn.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 50 and "cmdstat_eval" not in stats


def test_many_calls_after_a_script_flush_and_with_a_failing_call(redis_conn):
    script = ScriptCall(redis_conn, "if ARGV[1] == 'bad' then return redis.error_reply('no') end "
                                    "return ARGV[1]")
    script.many([([], ["a"])])
    redis_conn.script_flush()
    answers = script.many([([], ["a"]), ([], ["bad"]), ([], ["c"])])
    assert answers[0] == b"a" and answers[2] == b"c"
    assert isinstance(answers[1], redis.ResponseError) and "no" in str(answers[1])
    assert script.many([]) == []

"""Seeded fuzzing of both webhook endpoints on a real redis-server (hypothesis, derandomised).

2,000 requests per endpoint: the real fixtures mutated (fields dropped, retyped, replaced by
huge, unicode or nested values), bodies that are not JSON, and wrong or missing headers (event,
token, signature, content type). Whatever comes in: no 5xx, a JSON answer (with a reason for
every 4xx), and nothing written to Redis unless the answer says the event was stored.
"""

import base64
import copy
import functools
import json
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.signing import sign
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app
from tests.support.payloads import fixture
from workers.core.routing import AGENT_PARAMETER
from workers.engine.intake import Mover

EXAMPLES = 2000
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])
KEY = bytes(range(7, 39))
SIGNING_TOKEN = "whsec_" + base64.b64encode(KEY).decode()
GITLAB_FIXTURES = [fixture(name) for name in (
    "gitlab_push_real_lrz.json", "gitlab_tag_push_create_real_lrz.json",
    "gitlab_tag_push_delete_real_lrz.json", "gitlab_merge_request_open_real_lrz.json")]
JENKINS_FIXTURES = [fixture(name) for name in (
    "jenkins_notification_started.json", "jenkins_notification_completed_unstable.json",
    "jenkins_notification_finalized.json", "jenkins_notification_finished_legacy.json")]
GITLAB_EVENTS = ["Push Hook", "Tag Push Hook", "Merge Request Hook", "Job Hook", "push hook"]
# Header values as a WSGI server hands them on: latin-1, no line breaks.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255,
                                    blacklist_characters="\x7f"), max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
weird_values = st.one_of(
    json_values,
    st.tuples(st.text(min_size=1, max_size=4), st.integers(300, 3000)).map(
        lambda pair: pair[0] * pair[1]),  # huge: past the body limit now and then
    st.text(st.characters(min_codepoint=0x80), max_size=50),  # unicode, no ASCII
    st.just("0" * 40), st.just(""), st.just([]), st.just({}),
    st.integers(1, 10).map(lambda depth: json.loads("[" * depth * 20 + "]" * depth * 20)))


def _slots(doc):
    """Every (container, key) in a JSON document, in a stable order."""
    out, todo = [], [doc]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            out.append((node, key))
            if isinstance(value, (dict, list)):
                todo.append(value)
    return out


# Strategies are built once and only drawn from per example: hypothesis validates each strategy
# object it is handed, and building bodies() afresh in every Jenkins example (and the constant
# parts of mutated() on every mutation) cost more than the request itself (cProfile).
MUTATIONS = st.integers(0, 4)
OPERATIONS = st.sampled_from(["drop", "replace", "retype", "wrap"])
WRAP_KEYS = st.text(max_size=5)


@functools.cache
def upto(n: int):
    return st.integers(0, n)


@st.composite
def _mutated(draw, documents):
    doc = copy.deepcopy(draw(documents))
    for _ in range(draw(MUTATIONS)):
        slots = _slots(doc)
        if not slots:
            break
        container, key = slots[draw(upto(len(slots) - 1))]
        operation = draw(OPERATIONS)
        if operation == "drop":
            del container[key]
        elif operation == "replace":
            container[key] = draw(weird_values)
        elif operation == "retype":
            value = container[key]
            container[key] = str(value) if not isinstance(value, str) else draw(
                st.sampled_from([None, 0, 1.5, True, [value], {"v": value}]))
        else:
            container[key] = {draw(WRAP_KEYS): container[key]}
    return doc


def mutated(documents):
    return _mutated(st.sampled_from(documents))


def bodies(documents):
    """Mutated fixtures, JSON of any shape, truncated fixtures and bytes that are not JSON."""
    encode = st.sampled_from([True, False]).flatmap(
        lambda ascii_only: st.just(lambda doc: json.dumps(doc, ensure_ascii=ascii_only)
                                   .encode()))
    return st.one_of(
        st.tuples(mutated(documents), encode).map(lambda pair: pair[1](pair[0])),
        json_values.map(lambda doc: json.dumps(doc).encode()),
        st.tuples(st.sampled_from(documents), st.integers(0, 3000)).map(
            lambda pair: json.dumps(pair[0]).encode()[:pair[1]]),
        st.binary(max_size=300),
        st.sampled_from([b"", b"null", b"[]", b"{}", b'{"a":', b"\xff\xfe{}", b"1e999999"]))


content_types = st.sampled_from(["application/json", "application/json;charset=UTF-8",
                                 "text/plain", "application/x-www-form-urlencoded", "", "\xe9"])


def mostly(value, other):
    """`value` nine times in ten, else something drawn from `other`: most requests get past
    the token and signature checks, so the parser is what gets fuzzed."""
    return st.integers(0, 9).flatmap(lambda i: st.just(value) if i else other)


def snapshot(redis_conn) -> tuple[int, int]:
    """Keys but the shared metrics' (a notification ignored for naming another job than its
    build's is counted there: workers.core.notifications), and events stored: pushes in the
    intake and jobs in the queue."""
    # One round trip (KEYS and both lengths in a pipeline), not a SCAN and two LLENs: taken
    # twice per example, 8,000 times, the waits on redis-server were 40% of the module's time
    # on a loaded machine (cProfile).
    pipe = redis_conn.pipeline(transaction=False)
    pipe.keys().llen("rq:queue:ci-autoscaler").llen("cia:intake")
    keys, queued, intake = pipe.execute()
    return sum(1 for key in keys if not key.startswith(b"cia:metrics:")), queued + intake


def check_answer(response, before, after) -> None:
    assert response.status_code < 500, response.get_data()
    answer = response.get_json(silent=True)
    assert isinstance(answer, dict), response.get_data()
    if 400 <= response.status_code < 500:
        assert answer.get("reason"), answer
    event(f"{response.status_code} {answer.get('status') or answer.get('error')}")
    stored = response.status_code == 202 or answer.get("status") == "recorded"
    if not stored:  # rejected, ignored or duplicate: Redis as it was
        assert after == before, (response.status_code, answer)
    if response.status_code == 202:
        assert after[1] == before[1] + 1


@pytest.fixture(scope="module")
def fuzz_redis(tmp_path_factory):
    from tests.support.redis_server import RedisServer
    server = RedisServer(tmp_path_factory.mktemp("fuzz-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_conn(fuzz_redis):
    import redis
    return redis.Redis.from_url(fuzz_redis.url)


@pytest.fixture(scope="module")
def gitlab_client(fuzz_redis):
    # Signing on: most examples are signed right, so the body reaches the parser.
    return make_app(fuzz_redis.url, gitlab_webhook_signing_token=SIGNING_TOKEN,
                    max_body_bytes=16_384).test_client()


@given(body=bodies(GITLAB_FIXTURES),
       event=mostly("Push Hook", st.sampled_from(GITLAB_EVENTS) | header_text | st.none()),
       token=mostly(GITLAB_TOKEN, st.sampled_from([None, ""]) | header_text),
       signature=mostly("right", st.sampled_from(["none", "garbage", "stale"])),
       webhook_id=header_text, content_type=content_types,
       extra=st.dictionaries(st.sampled_from(["Idempotency-Key", "X-Gitlab-Event-UUID",
                                              "webhook-timestamp", "webhook-signature"]),
                             header_text, max_size=2))
@FUZZ
def test_gitlab_endpoint_survives_fuzzing(gitlab_client, fuzz_conn, body, event, token,
                                          signature, webhook_id, content_type, extra):
    headers = {"Content-Type": content_type}
    if event is not None:
        headers["X-Gitlab-Event"] = event
    if token is not None:
        headers["X-Gitlab-Token"] = token
    stamp = str(int(time.time()) - (3600 if signature == "stale" else 0))
    if signature in ("right", "stale"):
        headers |= {"webhook-id": webhook_id or "id", "webhook-timestamp": stamp,
                    "webhook-signature": sign(KEY, webhook_id or "id", stamp, body)}
    elif signature == "garbage":
        headers |= {"webhook-id": webhook_id, **extra}
    else:
        headers |= {k: v for k, v in extra.items() if not k.startswith("webhook-")}
    before = snapshot(fuzz_conn)
    response = gitlab_client.post("/webhooks/gitlab", data=body, headers=headers)
    check_answer(response, before, snapshot(fuzz_conn))


@pytest.fixture(scope="module")
def jenkins_client(fuzz_redis):
    return make_app(fuzz_redis.url, max_body_bytes=16_384).test_client()


@pytest.fixture(scope="module")
def our_agents(jenkins_client):
    """Builds queued on our agents, so that mutated notifications can name one."""
    push = json.dumps(GITLAB_FIXTURES[0]).encode()
    agents = []
    for i in range(3):
        answer = jenkins_client.post("/webhooks/gitlab", data=push.replace(
            b"a4bf10d93a2d136f1db911b6f1c03d26d835a44f", f"{i + 1:040x}".encode()),
            headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN})
        state = jenkins_client.application.extensions["ci_autoscaler"].state
        Mover(state).drain()  # the worker's part: the push's job and build state
        agents.append(state.get_build(answer.json["build_key"])["agent"])
    return [{**note, "build": {**note["build"], "parameters": {
        **note["build"].get("parameters", {}), AGENT_PARAMETER: agent}}}
        for note in JENKINS_FIXTURES for agent in agents]


@pytest.fixture(scope="module")
def jenkins_bodies(our_agents):
    """The bodies strategy, built once for the module (not in every example)."""
    return bodies(JENKINS_FIXTURES + our_agents)


@given(data=st.data(), where=mostly("query", st.sampled_from(["header", "both", "none"])),
       token=mostly(JENKINS_TOKEN, st.just("") | header_text),
       content_type=content_types)
@FUZZ
def test_jenkins_endpoint_survives_fuzzing(jenkins_client, fuzz_conn, jenkins_bodies, data,
                                           where, token, content_type):
    body = data.draw(jenkins_bodies)
    headers = {"Content-Type": content_type}
    query = {}
    if where in ("header", "both"):
        headers["X-Jenkins-Token"] = token
    if where in ("query", "both"):
        query["token"] = token
    before = snapshot(fuzz_conn)
    response = jenkins_client.post("/webhooks/jenkins", data=body, headers=headers,
                                   query_string=query)
    check_answer(response, before, snapshot(fuzz_conn))

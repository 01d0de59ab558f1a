"""A Jenkins notification read for its fields only (workers.core.notification_payload) says
what the whole body parsed says (parse_jenkins_notification of json.loads), for the plugin's
real bodies and for the shapes a notification may take; and what the whole body refuses,
it refuses."""

import json

import pytest

from tests.support.payloads import fixture
from workers.core.errors import InvalidPayload
from workers.core.notification_payload import notification_fields
from workers.core.routing import AGENT_PARAMETER, parse_jenkins_notification

REAL = ["jenkins_notification_started.json", "jenkins_notification_completed_unstable.json",
        "jenkins_notification_finalized.json", "jenkins_notification_finished_legacy.json"]


def _variants():
    for name in REAL:
        payload = fixture(name)
        yield name, payload
        build = payload["build"]
        yield f"{name}+agent", {**payload, "build": {
            **build, "queue_id": 42,
            "parameters": {**(build.get("parameters") or {}), AGENT_PARAMETER: "cia-b-1a2b"}}}
        yield f"{name}+odd", {**payload, "url": 5, "build": {
            **build, "status": {"x": 1}, "queue_id": True, "full_url": "ftp://x",
            "parameters": {AGENT_PARAMETER: 7}}}
        for empty in (None, [], "", 0, False, {}):
            yield f"{name}+params={empty!r}", {**payload, "build": {**build,
                                                                   "parameters": empty}}
        yield f"{name}-optional", {"name": payload["name"], "build": {
            "number": build["number"], "phase": build["phase"]}}


@pytest.mark.parametrize("name,payload", list(_variants()), ids=[n for n, _ in _variants()])
def test_the_fields_read_say_what_the_whole_body_says(name, payload):
    body = json.dumps(payload).encode()
    assert parse_jenkins_notification(notification_fields(body)) \
        == parse_jenkins_notification(json.loads(body))


@pytest.mark.parametrize("payload", [
    {"name": "x"}, {"name": "x", "build": {"number": 1}}, {"build": {"number": 1}},
    {"name": "x", "build": {"number": "1", "phase": "STARTED"}},
    {"name": "x", "build": {"number": True, "phase": "STARTED"}},
    {"name": "x", "build": {"number": 1.0, "phase": "STARTED"}},
    {"name": 3, "build": {"number": 1, "phase": "STARTED"}},
    {"name": "x", "build": [1]},
    {"name": "x", "build": {"number": 1, "phase": "EXPLODED"}},
    {"name": "x", "build": {"number": 1, "phase": "STARTED", "parameters": [1]}},
    {"name": "x", "build": {"number": 1, "phase": "STARTED", "parameters": "p"}},
    "text", [1], None,
])
def test_what_the_whole_body_refuses_is_refused(payload):
    body = json.dumps(payload).encode()
    with pytest.raises(InvalidPayload):
        parse_jenkins_notification(json.loads(body))
    with pytest.raises(InvalidPayload):
        parse_jenkins_notification(notification_fields(body))


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"name": "\xff"}'])
def test_a_body_that_is_not_json_is_invalid_with_the_reason(body):
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        notification_fields(body)

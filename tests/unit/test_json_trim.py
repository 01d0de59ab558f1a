"""A body past the web's limit, read in pieces and trimmed to the members its parser reads
(workers.core.json_trim): the parser reads the same fields from it as from the whole body."""

import json
import time

import msgspec
import pytest

from tests.support.payloads import fixture
from workers.core import notification_payload, push_payload
from workers.core.errors import InvalidPayload
from workers.core.json_trim import MAX_STEPS, TrimmedTooLarge, Trimmer
from workers.core.notification_payload import NOTIFICATION_SPEC, notification_fields
from workers.core.push_payload import PUSH_SPEC, push_fields, system_hook_event


def trimmed(body: bytes, spec, *, piece: int = 65536, limit: int = 1 << 20) -> bytes:
    trimmer = Trimmer(spec, limit)
    for i in range(0, len(body), piece):
        trimmer.feed(body[i:i + piece])
    return trimmer.close()


def _names(struct) -> set[bytes]:
    return {field.encode_name.encode() for field in msgspec.structs.fields(struct)}


def test_the_specs_name_every_member_the_parsers_read():
    """A member the parser reads and the spec leaves out would be missing from every
    delivery past the limit."""
    assert _names(push_payload._PushFields) | _names(push_payload._SystemHookEvent) == \
        set(PUSH_SPEC)
    assert _names(push_payload._Project) == set(PUSH_SPEC[b"project"])
    assert _names(notification_payload._Notification) == set(NOTIFICATION_SPEC)
    build = NOTIFICATION_SPEC[b"build"]
    assert _names(notification_payload._Build) == set(build)
    assert _names(notification_payload._Parameters) == set(build[b"parameters"])


def _push() -> dict:
    push = fixture("gitlab_push_real_lrz.json")
    push["push_options"] = {"ci": {"variable": ["CI_AUTOSCALER_CPU=2"]}}
    push["commits"][0]["message"] = 'a "quoted" \\ message {with [brackets]}\n' * 50
    push["commits"][0]["added"] = [f"dir \"{i}\"/é[{i}].txt" for i in range(50)]
    return push


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 65536])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_push_trimmed_in_pieces_of_any_size_reads_as_the_whole_body(piece, indent):
    body = json.dumps(_push(), indent=indent, ensure_ascii=False).encode()
    small = trimmed(body, PUSH_SPEC, piece=piece)
    assert push_fields(small) == push_fields(body)
    assert b"commits" not in small and len(small) < 1024


@pytest.mark.parametrize("piece", [1, 5, 65536])
def test_a_completed_trimmed_keeps_what_is_read_not_its_log_or_artifacts(piece):
    note = fixture("jenkins_notification_completed_unstable.json")
    note["build"].update(log="line \"1\"\\\n" * 100, artifacts={"a.jar": {"archive": "u"}},
                         parameters={"BIG": "x" * 5000, "CI_AUTOSCALER_AGENT": "cia-1"})
    body = json.dumps(note).encode()
    small = trimmed(body, NOTIFICATION_SPEC, piece=piece)
    assert notification_fields(small) == notification_fields(body)
    assert b"log" not in small and b"BIG" not in small


def test_a_system_hooks_event_name_is_kept():
    body = json.dumps(_push() | {"event_name": "push"}).encode()
    assert system_hook_event(trimmed(body, PUSH_SPEC, piece=3)) == "push"


@pytest.mark.parametrize("body", [
    b"[]", b'"push"', b'{"ref": 1', b'{"ref" 1}', b'{"commits": [1, 2}', b"{} {}",
    b'{"commits": ["\xff"]}', b"",
])
def test_what_is_no_json_object_is_refused(body):
    with pytest.raises(InvalidPayload):
        trimmed(body, PUSH_SPEC, piece=2)


def test_members_kept_past_the_bound_are_refused_as_they_arrive():
    body = json.dumps({"ref": "refs/heads/" + "x" * 5000}).encode()
    trimmer = Trimmer(PUSH_SPEC, 1024)
    with pytest.raises(TrimmedTooLarge):
        trimmer.feed(body)
    assert len(trimmer.out) <= 1024 + len(body)


def test_a_body_of_nested_brackets_is_refused_within_a_second():
    """Brackets are followed one at a time: a token holder's 25 MiB of them took 25 s."""
    body = b'{"commits": [' + b"[[]]," * (MAX_STEPS + 1) + b"[]]}"  # one bracket each
    started = time.process_time()  # its CPU: the shared machine's load aside
    with pytest.raises(TrimmedTooLarge):
        trimmed(body, PUSH_SPEC)
    assert time.process_time() - started < 2


def test_a_body_of_members_at_its_top_is_refused_within_a_second():
    """Members of an object selected from (the body's top, a push's project, a notification's
    build) are followed one at a time too: 25 MiB of `"a":1,` held a web thread for 16 s."""
    body = b'{"project": {' + b'"a":1,' * (MAX_STEPS + 1) + b'"id": 1}}'
    started = time.process_time()  # its CPU (0.4 s here): the shared machine's load aside
    with pytest.raises(TrimmedTooLarge):
        trimmed(body, PUSH_SPEC)
    assert time.process_time() - started < 2

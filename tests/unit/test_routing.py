import json
from dataclasses import replace

import orjson
import pytest

from tests.support.payloads import fixture, fixture_bytes
from workers.core.errors import InvalidPayload
from workers.core.models import EventKind, Route
from workers.core.routing import (
    AGENT_PARAMETER, BUILD_KEY_PARAMETER, Ignored, Push, commit_key, parse_gitlab_push,
    parse_gitlab_push_body,
    parse_jenkins_notification, push_commit_key, route_push)

ROUTES = (Route(project="hephaestustest/*", ref="refs/heads/*", job="build",
                parameters={"GIT_COMMIT": "{sha}", "GIT_BRANCH": "{branch}", "WHO": "{user}"}),
          Route(project="*", ref="refs/tags/*", job="release", parameters={"TAG": "{tag}"}))


def test_real_push_becomes_a_build_with_sha_and_branch():
    push = parse_gitlab_push("Push Hook", fixture("gitlab_push_real_lrz.json"))
    build = route_push(push, ROUTES, received_at=5.0)
    assert build.job == "build"
    assert build.sha == "a4bf10d93a2d136f1db911b6f1c03d26d835a44f"
    assert build.parameters["GIT_COMMIT"] == build.sha
    assert build.parameters["GIT_BRANCH"] == "main"
    assert build.parameters["WHO"] == "ga84xah"
    assert build.parameters[AGENT_PARAMETER] == build.agent_name
    assert build.parameters[BUILD_KEY_PARAMETER] == build.build_key
    assert build.received_at == 5.0


def test_annotated_tag_builds_the_commit_not_the_tag_object():
    payload = fixture("gitlab_tag_push_create_real_lrz.json")
    push = parse_gitlab_push("Tag Push Hook", payload)
    assert payload["after"] != payload["checkout_sha"]
    assert push.sha == payload["checkout_sha"]
    build = route_push(push, ROUTES)
    assert build.job == "release"
    assert build.parameters["TAG"] == payload["ref"].removeprefix("refs/tags/")


def test_a_tag_push_test_of_an_older_gitlab_is_its_branch_push_sample():
    """GitLab's "Test" of tag push events sent the branch push sample (ref
    refs/heads/<default branch>) with X-Gitlab-Event "Tag Push Hook" (TestHooks::ProjectService
    aliased tag_push_events_data to push_events_data); GitLab itself names a push's kind by
    its ref (Gitlab::DataBuilder::Push.build), and its build got {branch} "" and {tag} "main"."""
    push = parse_gitlab_push("Tag Push Hook", fixture("gitlab_push_real_lrz.json"))
    assert push.event is EventKind.PUSH
    build = route_push(push, ROUTES)
    assert build.job == "build" and build.parameters["GIT_BRANCH"] == "main"
    tag = parse_gitlab_push("Push Hook", fixture("gitlab_tag_push_create_real_lrz.json"))
    assert tag.event is EventKind.TAG_PUSH  # and the other way round
    assert route_push(tag, ROUTES).parameters["TAG"] == "v0.2.0-test"


@pytest.mark.parametrize("name,header,reason", [
    ("gitlab_tag_push_delete_real_lrz.json", "Tag Push Hook", "tag deleted"),
    ("gitlab_merge_request_open_real_lrz.json", "Merge Request Hook", "does not start builds"),
    ("gitlab_job_gitlabcom_2023_gogitlab.json", "Job Hook", "does not start builds"),
])
def test_deletions_and_other_events_are_ignored(name, header, reason):
    result = parse_gitlab_push(header, fixture(name))
    assert isinstance(result, Ignored)
    assert reason in result.reason


@pytest.mark.parametrize("header", [None, ""])
def test_a_delivery_without_x_gitlab_event_is_ignored_saying_so(header):
    """A request made by hand (curl), or GitHub's with our token: no X-Gitlab-Event. Its
    reason read "event None does not start builds"."""
    body = fixture_bytes("gitlab_push_real_lrz.json")
    expected = Ignored("no X-Gitlab-Event header: not a GitLab push; nothing to build")
    assert parse_gitlab_push_body(header, body) == expected
    assert parse_gitlab_push(header, fixture("gitlab_push_real_lrz.json")) == expected


def test_branch_deletion_is_ignored():
    payload = fixture("gitlab_push_real_lrz.json") | {"after": "0" * 40, "checkout_sha": None}
    assert parse_gitlab_push("Push Hook", payload) == Ignored("branch deleted")


@pytest.mark.parametrize("name,header,reason", [
    ("gitlab_push_real_lrz.json", "Push Hook", "branch deleted"),
    ("gitlab_tag_push_delete_real_lrz.json", "Tag Push Hook", "tag deleted"),
])
def test_a_deletion_in_a_sha256_project_is_ignored(name, header, reason):
    """A project with SHA-256 object names sends 64 zeros as `after` for a deleted branch or
    tag (GitLab's Repository#blank_ref: Gitlab::Git::SHA256_BLANK_SHA for such a project), not
    a commit to build."""
    payload = fixture(name) | {"after": "0" * 64, "checkout_sha": None}
    assert parse_gitlab_push(header, payload) == Ignored(reason)


def test_unrouted_project_is_ignored_with_the_reason():
    push = Push(event="push", project="other/thing", ref="refs/heads/main", sha="a" * 40,
                user="u")
    result = route_push(push, ROUTES[:1])
    assert isinstance(result, Ignored) and "other/thing" in result.reason


@pytest.mark.parametrize("payload,field", [
    ({}, "ref"),
    ({"ref": "refs/heads/x", "after": "a" * 40}, "project.path_with_namespace"),
    ({"ref": 3, "after": "a" * 40, "project": {"path_with_namespace": "g/p"}}, "ref"),
    ([], "JSON object"),
])
def test_missing_or_mistyped_fields_are_invalid(payload, field):
    with pytest.raises(InvalidPayload, match=field.replace(".", r"\.")):
        parse_gitlab_push("Push Hook", payload)


@pytest.mark.parametrize("header, change", [
    ("Push Hook", {"user_name": "J\u00f6rg"}),  # a field the push reads
    ("Push Hook", {"push_options": {"ci": {"variable": "A=\u00e9"}}}),
    ("Tag Push Hook", {"ref": "refs/tags/v\u00e9"}),
    ("System Hook", {"event_name": "push\u00e9"}),
])
def test_a_body_that_is_not_utf8_is_invalid_not_a_crash(header, change):
    """JSON between systems is UTF-8 (RFC 8259, 8.1): a body in Latin-1 raised
    UnicodeDecodeError out of the parser, and the webhook answered 500 for a bad body."""
    body = json.dumps(fixture("gitlab_push_real_lrz.json") | change,
                      ensure_ascii=False).encode("latin-1")
    with pytest.raises(InvalidPayload, match="not valid JSON: it is not UTF-8"):
        parse_gitlab_push_body(header, body)


@pytest.mark.parametrize("header, tail", [
    ("Push Hook", b',"push_options":1e400}'),  # a field read: msgspec's ValidationError, a 500
    ("Push Hook", b',"project_id":[-1e999]}'),
    ("Push Hook", b',"push_options":' + b"[" * 3000 + b"]" * 3000 + b"}"),  # RecursionError
    ("Push Hook", b',"commits":' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("System Hook", b',"commits":' + b"[" * 3000 + b"]" * 3000 + b"}"),
    ("Push Hook", b',"commits":[{"message":"\xff"}]}'),  # not UTF-8 where never read: was
    ("Push Hook", b',"repository":{"\xed\xa0\x80":1}}'),  # taken as if it were
])
def test_a_body_orjson_refuses_is_invalid_not_a_crash(header, tail):
    """Found in review (rev3): read for its fields only, a body orjson (which read it whole
    before) refused raised a ValidationError or RecursionError (a 500), or was read."""
    body = json.dumps(fixture("gitlab_push_real_lrz.json") | {"event_name": "push"}
                      ).encode()[:-1] + tail
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        parse_gitlab_push_body(header, body)


def test_a_project_glob_matches_gitlabs_path_in_any_case_and_keys_it_once():
    """GitLab's paths are case-insensitive (Routable.find_by_full_path); its webhook carries
    the path as created, a route or the catch-up may spell it otherwise."""
    routes = (Route(project="team/app", ref="refs/heads/*", job="build"),)
    webhook = Push(event=EventKind.PUSH, project="Team/App", ref="refs/heads/main",
                   sha="a" * 40, user="u")
    catch_up = Push(event=EventKind.PUSH, project="team/app", ref="refs/heads/main",
                    sha="a" * 40, user="")
    built = route_push(webhook, routes)
    assert built.job == "build" and built.project == "Team/App"  # GitLab's spelling kept
    assert push_commit_key(webhook) == push_commit_key(catch_up)
    assert route_push(replace(webhook, ref="refs/heads/Main"), (
        Route(project="team/app", ref="refs/heads/main", job="build"),)) == Ignored(
        "no route for project 'Team/App' ref 'refs/heads/Main'")  # git refs keep their case


def test_same_push_gives_same_build_key_and_agent():
    payload = fixture("gitlab_push_real_lrz.json")
    a = route_push(parse_gitlab_push("Push Hook", payload), ROUTES)
    b = route_push(parse_gitlab_push("Push Hook", payload), ROUTES)
    other = route_push(parse_gitlab_push("Push Hook", payload | {"checkout_sha": "b" * 40}),
                       ROUTES)
    assert (a.build_key, a.agent_name) == (b.build_key, b.agent_name)
    assert other.build_key != a.build_key


def test_each_delivery_of_a_push_is_a_run_of_its_own_commit():
    push = parse_gitlab_push("Push Hook", fixture("gitlab_push_real_lrz.json"))
    one, again, two = (route_push(push, ROUTES, delivery=d) for d in ("d-1", "d-1", "d-2"))
    assert (one.build_key, one.agent_name) == (again.build_key, again.agent_name)
    assert two.build_key != one.build_key and two.agent_name != one.agent_name
    assert two.parameters[BUILD_KEY_PARAMETER] == two.build_key
    assert two.parameters[AGENT_PARAMETER] == two.agent_name
    assert commit_key(one) == commit_key(two) == route_push(push, ROUTES).build_key


@pytest.mark.parametrize("name,phase,done", [
    ("jenkins_notification_started.json", "STARTED", False),
    ("jenkins_notification_completed_unstable.json", "COMPLETED", True),
    ("jenkins_notification_finalized.json", "FINALIZED", True),
    ("jenkins_notification_finished_legacy.json", "FINISHED", True),
])
def test_real_jenkins_notifications_parse(name, phase, done):
    note = parse_jenkins_notification(fixture(name))
    assert note.phase == phase and note.done is done
    assert note.agent is None  # none of these ran on one of our agents


def test_jenkins_notification_names_our_agent_from_parameters():
    payload = fixture("jenkins_notification_completed_unstable.json")
    payload["build"]["parameters"][AGENT_PARAMETER] = "cia-build-0123456789ab"
    payload["build"]["queue_id"] = 42
    note = parse_jenkins_notification(payload)
    assert (note.agent, note.queue_id, note.status) == ("cia-build-0123456789ab", 42, "UNSTABLE")


@pytest.mark.parametrize("payload", [
    {"name": "x"}, {"name": "x", "build": {"number": 1}},
    {"name": "x", "build": {"number": "1", "phase": "STARTED"}},
    {"name": "x", "build": {"number": 1, "phase": "EXPLODED"}}, "text",
])
def test_bad_jenkins_notifications_are_invalid(payload):
    with pytest.raises(InvalidPayload):
        parse_jenkins_notification(payload)


def test_a_build_request_as_a_dict_is_asdicts_answer_and_round_trips():
    from dataclasses import asdict, fields

    from workers.core.models import BuildRequest

    push = parse_gitlab_push("Push Hook", fixture("gitlab_push_real_lrz.json"))
    build = route_push(push, ROUTES, received_at=5.0)
    as_dict = build.to_dict()
    # `newer` (a newer release's fields, none here) is spread into the dict, not a key of it
    assert as_dict == {k: v for k, v in asdict(build).items() if k != "newer"}
    assert list(as_dict) == [f.name for f in fields(BuildRequest) if f.name != "newer"]
    as_dict["parameters"]["GIT_COMMIT"] = "changed"  # a copy, as asdict's
    assert build.parameters["GIT_COMMIT"] == build.sha
    assert BuildRequest.from_dict(build.to_dict()) == build


def test_a_build_request_of_another_release_reads_as_this_release_knows_it():
    """A rolling upgrade: a newer release's field is left out, one an older release had not
    written yet is its default (workers.engine.task_args). Before, cls(**data) raised TypeError on
    the newer field: every provision the new web queued failed on the old worker."""
    from dataclasses import replace

    from workers.core.models import BuildRequest

    push = parse_gitlab_push("Push Hook", fixture("gitlab_push_real_lrz.json"))
    build = replace(route_push(push, ROUTES, received_at=5.0), node_label="small")
    newer = {**build.to_dict(), "newer_field": {"any": "value"}}
    assert BuildRequest.from_dict(newer) == build
    older = {k: v for k, v in build.to_dict().items() if k != "node_label"}
    assert BuildRequest.from_dict(older) == replace(build, node_label="")


def test_a_newer_releases_fields_survive_this_release_rewriting_the_request():
    """A rolling upgrade: this (older) worker re-queues a provision or rewrites the record's
    request (a new agent name: workers.engine.agent_names, a trigger retried: workers.engine.trigger_retry)
    from the BuildRequest it read. Before, the newer release's fields were dropped there for
    good: the newer worker that ran the job or read the record later built the push as if
    they had never been sent."""
    from dataclasses import replace

    from workers.core.models import BuildRequest

    push = parse_gitlab_push("Push Hook", fixture("gitlab_push_real_lrz.json"))
    build = route_push(push, ROUTES, received_at=5.0)
    extra = {"merge_ref": "refs/merge-requests/7/merge", "newer": {"nested": [1]}}
    read = BuildRequest.from_dict({**build.to_dict(), **extra})
    assert read == build and "merge_ref" not in repr(read)
    moved = replace(read, agent_name="cia-other-0123456789ab")
    assert moved.to_dict() == {**build.to_dict(), **extra, "agent_name": moved.agent_name}
    assert BuildRequest.from_dict(moved.to_dict()).to_dict() == moved.to_dict()

"""Pushes whose pusher asked for no build (GitLab's push options ci.skip and
integrations.skip_ci) are ignored as GitLab itself reads them; ci.variable alone still builds."""

import json

import pytest

from workers.core.models import EventKind
from workers.core.push_skip import skip_option
from workers.core.routing import Ignored, Push, parse_gitlab_push_body
from tests.support.payloads import fixture


def body(push_options) -> bytes:
    push = fixture("gitlab_push_real_lrz.json")
    push["push_options"] = push_options
    return json.dumps(push).encode()


# (push_options as GitLab sends them, the option read). Gitlab::PushOptions keeps `-o ci.skip`
# as {"ci": {"skip": true}}; skip_option reads what GitLab's own `present?` check reads.
@pytest.mark.parametrize("options, option", [
    ({"ci": {"skip": True}}, "ci.skip"),
    ({"integrations": {"skip_ci": True}}, "integrations.skip_ci"),
    ({"ci": {"skip": "true", "variable": {"CI_AUTOSCALER_CPU=4": 1}}}, "ci.skip"),
    ({"ci": {"variable": {"CI_AUTOSCALER_CPU=4": 1}}}, None),
    ({"ci": {"skip": False}}, None),
    ({"ci": {"skip": ""}}, None),
    ({}, None), (None, None), ([], None), ({"ci": "skip"}, None),
])
def test_the_push_options_that_ask_for_no_build(options, option):
    assert skip_option(options) == option


def test_a_push_with_ci_skip_is_ignored_with_the_push_it_was():
    ignored = parse_gitlab_push_body("Push Hook", body({"ci": {"skip": True}}))
    assert isinstance(ignored, Ignored)
    assert ignored.reason == "push option ci.skip: the pusher asked for no build"
    assert not ignored.refused  # nothing was wrong with it: not logged as a rejection
    assert isinstance(ignored.skipped, Push) and ignored.skipped.event is EventKind.PUSH


def test_a_push_with_size_hints_only_still_builds():
    push = parse_gitlab_push_body("Push Hook", body({"ci": {"variable": {
        "CI_AUTOSCALER_CPU=4": 1}}}))
    assert isinstance(push, Push) and push.hints == {"CI_AUTOSCALER_CPU": "4"}


def test_a_deleted_branch_is_ignored_as_deleted_whatever_its_options():
    push = fixture("gitlab_push_real_lrz.json")
    push.update(after="0" * 40, checkout_sha=None, push_options={"ci": {"skip": True}})
    ignored = parse_gitlab_push_body("Push Hook", json.dumps(push).encode())
    assert ignored == Ignored("branch deleted") and ignored.skipped is None


# Gitlab::Ci::Pipeline::Chain::Skip::SKIP_PATTERN: /\[(ci[ _-]skip|skip[ _-]ci)\]/i
@pytest.mark.parametrize("message, skips", [
    ("chore(release): 1.4.0 [skip ci]", True), ("[ci skip] bump", True),
    ("[CI-SKIP] version", True), ("bump [Skip_CI]\n\nbody", True),
    ("title\n\n[ci skip] in the body", True),
    ("skip ci", False), ("[skip  ci]", False), ("[ci skipped]", False), ("fix ci", False),
])
def test_the_commit_messages_that_ask_for_no_build(message, skips):
    push = fixture("gitlab_push_real_lrz.json")
    push["commits"][-1]["message"] = message  # the pushed commit: `after`
    assert push["commits"][-1]["id"] == push["after"]
    parsed = parse_gitlab_push_body("Push Hook", json.dumps(push).encode())
    assert isinstance(parsed, Ignored) is skips, parsed
    if skips:
        assert parsed.reason == "the commit's message asks for no build ([skip ci])"


def test_only_the_pushed_commits_message_counts():
    push = fixture("gitlab_push_real_lrz.json")
    push["commits"][0]["message"] = "wip [skip ci]"  # an older commit of the push
    assert isinstance(parse_gitlab_push_body("Push Hook", json.dumps(push).encode()), Push)
    push["commits"] = ""  # GitLab before 9, for a push of no commits
    assert isinstance(parse_gitlab_push_body("Push Hook", json.dumps(push).encode()), Push)


def test_a_tag_push_naming_no_commit_is_ignored():
    """GitLab's "Test > Tag push events" of a project without tags (Integrations::
    ProjectTestData#tag_push_events_data: Push.build_sample(is_tag: true)) sends tag v1.0.0,
    which no one pushed: `after` the default branch's head, `before` an older commit, and
    `checkout_sha` null, as GitLab finds no such tag (Push#checkout_sha)."""
    push = fixture("gitlab_push_real_lrz.json")
    push.update(ref="refs/tags/v1.0.0", object_kind="tag_push", event_name="tag_push",
                checkout_sha=None)
    ignored = parse_gitlab_push_body("Tag Push Hook", json.dumps(push).encode())
    assert isinstance(ignored, Ignored) and ignored.reason.startswith(
        "tag push names no commit (checkout_sha null)")
    del push["checkout_sha"]  # a body without the field at all: built by `after`, as before
    assert parse_gitlab_push_body("Tag Push Hook", json.dumps(push).encode()).sha == \
        push["after"]

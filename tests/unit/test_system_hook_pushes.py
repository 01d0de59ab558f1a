"""A GitLab instance's system hook sends every project's pushes with `X-Gitlab-Event: System
Hook` and the kind in the body's `event_name` (docs.gitlab.com/administration/system_hooks,
"Push events" and "Tag events"): the project hook's push fields, without `object_kind` and
`user_username`. Such a push builds as the project hook's does; other system events are
ignored with the reason (a 4xx would count towards GitLab disabling the hook)."""

import json

import pytest

from tests.support.payloads import fixture
from workers.core.errors import InvalidPayload
from workers.core.models import EventKind
from workers.core.routing import Ignored, Push, parse_gitlab_push_body


def system_hook_body(name: str, event_name: str | None) -> bytes:
    body = fixture(name)
    for field in ("object_kind", "user_username", "event_name"):
        body.pop(field, None)
    if event_name is not None:
        body["event_name"] = event_name
    return json.dumps(body).encode()


def test_a_system_hook_push_is_the_project_hooks_push():
    project_hook = fixture("gitlab_push_real_lrz.json")
    result = parse_gitlab_push_body("System Hook",
                                    system_hook_body("gitlab_push_real_lrz.json", "push"))
    assert isinstance(result, Push) and result.event is EventKind.PUSH
    assert (result.project, result.ref, result.sha) == (
        project_hook["project"]["path_with_namespace"], project_hook["ref"],
        project_hook["checkout_sha"])
    assert result.user == project_hook["user_name"]  # no user_username in a system hook


def test_a_system_hook_tag_push_is_a_tag_push():
    result = parse_gitlab_push_body(
        "System Hook", system_hook_body("gitlab_tag_push_create_real_lrz.json", "tag_push"))
    assert isinstance(result, Push) and result.event is EventKind.TAG_PUSH


@pytest.mark.parametrize("event_name,says", [
    ("repository_update", "system hook event 'repository_update' does not start builds"),
    ("project_create", "system hook event 'project_create' does not start builds"),
    (None, "system hook event None does not start builds"),
    ("x" * 100, "system hook event None does not start builds"),
])
def test_other_system_hook_events_are_ignored_with_the_reason(event_name, says):
    result = parse_gitlab_push_body(
        "System Hook", system_hook_body("gitlab_push_real_lrz.json", event_name))
    assert isinstance(result, Ignored) and result.reason == says


def test_a_system_hook_whose_body_is_not_json_is_refused():
    with pytest.raises(InvalidPayload, match="not valid JSON"):
        parse_gitlab_push_body("System Hook", b"{not json")

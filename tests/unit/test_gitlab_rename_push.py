"""The project id a push carries (project.id, project_id): kept for the build's commit status,
which goes by the id when a rename or move took the path away (tests/integration/
test_gitlab_rename.py). An id that is not a positive integer is left out, never refused: a
4xx answer counts towards GitLab disabling the hook."""

import json

import pytest

from tests.support.payloads import fixture
from workers.core.routing import Push, parse_gitlab_push_body


def parsed(**changes) -> Push:
    body = fixture("gitlab_push_real_lrz.json")
    project = changes.pop("project", {})
    body["project"] |= project
    body |= changes
    push = parse_gitlab_push_body("Push Hook", json.dumps(body).encode())
    assert isinstance(push, Push)
    return push


def test_a_real_push_carries_its_project_id():
    assert parsed().project_id == 246765


def test_the_top_level_project_id_stands_in_for_a_missing_project_id():
    assert parsed(project={"id": None}, project_id=7).project_id == 7


@pytest.mark.parametrize("value", ["246765", True, -1, 0, 1.5, 2**64, [1], {"a": 1}])
def test_an_id_that_is_not_a_positive_integer_is_left_out_not_refused(value):
    assert parsed(project={"id": value}, project_id=value).project_id is None

"""workers.core.gitlab_instance: X-Gitlab-Instance (GitLab's base_url) against the served one."""

import pytest

from workers.core.gitlab_instance import foreign, instance_of


@pytest.mark.parametrize("value, seen", [
    ("https://gitlab.example.com", "gitlab.example.com"),
    ("https://GitLab.Example.com/", "gitlab.example.com"),
    ("gitlab.example.com", "gitlab.example.com"),
    ("http://gitlab.example.com:8080", "gitlab.example.com:8080"),
    ("https://example.com/gitlab/", "example.com/gitlab"),  # a relative URL root
    ("", ""), (None, ""), ("  ", "")])
def test_an_instance_is_compared_by_host_port_and_root(value, seen):
    assert instance_of(value) == seen


def test_a_push_from_another_instance_is_foreign_only_when_both_are_known():
    assert foreign("https://gitlab.a.example", "https://gitlab.a.example/") is None
    assert foreign("gitlab.a.example", "https://gitlab.a.example") is None
    assert foreign("", "https://gitlab.b.example") is None  # not configured: any
    assert foreign("https://gitlab.a.example", None) is None  # GitLab before 15.5
    reason = foreign("https://gitlab.a.example", "https://gitlab.b.example")
    assert "gitlab.b.example" in reason and "gitlab.a.example" in reason


def test_credentials_in_a_url_are_never_part_of_the_instance():
    assert instance_of("https://user:secret@gitlab.example.com/") == "gitlab.example.com"

"""workers.core.gitlab_instance: X-Gitlab-Instance (GitLab's base_url) against the served one."""

import pytest

from workers.core.gitlab_instance import foreign, instance_of


@pytest.mark.parametrize("value, seen", [
    ("https://gitlab.example.com", "gitlab.example.com"),
    ("https://GitLab.Example.com/", "gitlab.example.com"),
    ("gitlab.example.com", "gitlab.example.com"),
    ("http://gitlab.example.com:8080", "gitlab.example.com:8080"),
    # GitLab's base_url, the header's value, has no relative URL root (settings.rb
    # build_base_gitlab_url): a setting's path is no part of the instance
    ("https://example.com/gitlab/", "example.com"),
    ("https://gitlab.example.com:443", "gitlab.example.com"),  # base_url omits it
    ("http://gitlab.example.com:80/", "gitlab.example.com"),
    ("https://gitlab.example.com:80", "gitlab.example.com:80"),
    ("gitlab.example.com:443", "gitlab.example.com"),
    ("https://[2001:db8::1]:8443", "[2001:db8::1]:8443"),
    ("", ""), (None, ""), ("  ", "")])
def test_an_instance_is_compared_by_host_and_port(value, seen):
    assert instance_of(value) == seen


@pytest.mark.parametrize("served", [
    "https://example.com/gitlab",  # the external_url of a GitLab under a relative root
    "https://EXAMPLE.com:443/gitlab/", "example.com"])
def test_the_header_gitlab_sends_is_its_own_instance(served):
    # GitLab sends Gitlab.config.gitlab.base_url: scheme and host, the port only when not
    # its scheme's, never the relative URL root
    assert foreign(served, "https://example.com") is None


def test_a_push_from_another_instance_is_foreign_only_when_both_are_known():
    assert foreign("https://gitlab.a.example", "https://gitlab.a.example/") is None
    assert foreign("gitlab.a.example", "https://gitlab.a.example") is None
    assert foreign("", "https://gitlab.b.example") is None  # not configured: any
    assert foreign("https://gitlab.a.example", None) is None  # GitLab before 15.5
    reason = foreign("https://gitlab.a.example", "https://gitlab.b.example")
    assert "gitlab.b.example" in reason and "gitlab.a.example" in reason


def test_credentials_in_a_url_are_never_part_of_the_instance():
    assert instance_of("https://user:secret@gitlab.example.com/") == "gitlab.example.com"

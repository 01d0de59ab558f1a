"""Two GitLab instances sending pushes to one installation (service.gitlab_instances): the
same project path on both is two projects, which routes, build keys, the catch-up and commit
statuses cannot tell apart. Told its instance (CI_AUTOSCALER_GITLAB_INSTANCE), the web ignores
the other's pushes (200: a 4xx counts towards GitLab disabling the hook); not told, it takes
them with a warning naming both. On a real redis-server."""

import logging

from tests.integration.test_webhooks import PUSH, gitlab
from tests.support.app import make_app

A, B = "https://gitlab.a.example", "https://gitlab.b.example"


def test_a_push_from_another_instance_is_ignored_when_the_instance_is_set(redis_url, caplog):
    client = make_app(redis_url, gitlab_instance=A).test_client()

    other = gitlab(client, PUSH, **{"X-Gitlab-Instance": B, "Idempotency-Key": "b-1"})
    ours = gitlab(client, PUSH, **{"X-Gitlab-Instance": A + "/", "Idempotency-Key": "a-1"})
    unnamed = gitlab(client, PUSH, **{"Idempotency-Key": "old-1"})  # GitLab before 15.5

    assert (other.status_code, other.json["status"]) == (200, "ignored")
    assert "gitlab.b.example" in other.json["reason"]
    assert "CI_AUTOSCALER_GITLAB_INSTANCE" in other.json["reason"]
    assert ours.status_code == 202
    assert unnamed.status_code == 200 and unnamed.json["status"] == "duplicate"  # same push
    assert any(r.getMessage() == "webhook rejected" and "gitlab.b.example" in r.reason
               for r in caplog.records if hasattr(r, "reason") and r.reason)


def test_without_the_setting_a_second_instance_is_taken_with_one_warning(redis_url, caplog):
    client = make_app(redis_url).test_client()
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.webhooks")

    first = gitlab(client, PUSH, **{"X-Gitlab-Instance": A, "Idempotency-Key": "a-1"})
    assert first.status_code == 202
    assert not [r for r in caplog.records if "two GitLab instances" in r.getMessage()]
    for n in range(3):
        answer = gitlab(client, PUSH, **{"X-Gitlab-Instance": B, "Idempotency-Key": f"b-{n}"})
        assert answer.status_code == 200 and answer.json["status"] == "duplicate"

    warned = [r for r in caplog.records if "two GitLab instances" in r.getMessage()]
    assert len(warned) == 1
    assert (warned[0].instance, warned[0].first_instance) == ("gitlab.b.example",
                                                              "gitlab.a.example")


def test_a_gitlab_under_a_relative_root_is_taken_for_its_own(redis_url):
    """Set to the external URL of a GitLab served under /gitlab: GitLab's header is its
    base_url, with no relative URL root (config/settings.rb build_base_gitlab_url), and its
    pushes were all ignored as another instance's."""
    client = make_app(redis_url, gitlab_instance="https://example.com:443/gitlab/").test_client()

    answer = gitlab(client, PUSH, **{"X-Gitlab-Instance": "https://example.com",
                                     "Idempotency-Key": "root-1"})

    assert answer.status_code == 202, answer.json


def test_the_instances_warned_of_are_bounded(redis_url, caplog):
    """X-Gitlab-Instance is the sender's: a new value on each push is warned of up to
    WARNED_MOST times in a process, not once a push for ever."""
    from service.gitlab_instances import WARNED_MOST
    client = make_app(redis_url).test_client()
    caplog.set_level(logging.WARNING, logger="ci_autoscaler.webhooks")
    for n in range(WARNED_MOST + 10):
        answer = gitlab(client, PUSH, **{"X-Gitlab-Instance": f"https://gitlab{n}.example",
                                         "Idempotency-Key": f"i-{n}"})
        assert answer.status_code in (200, 202)

    warned = [r for r in caplog.records if "two GitLab instances" in r.getMessage()]
    assert len(warned) == WARNED_MOST

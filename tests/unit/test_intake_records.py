"""workers.core.intake_records: an intake record's build request is made anew from its push
with the routes; every request the webhook's routing makes comes out the same (the worker and
web share one config), and what a record says beyond its push is not used."""

import pytest

from workers.core.intake_records import rebuilt
from workers.core.models import EventKind, Route
from workers.core.routing import Ignored, Push, route_push

ROUTES = (
    Route(project="ci/maven-cache", ref="refs/heads/main", job="build",
          template="maven-cache-writer", parameters={"GIT_COMMIT": "{sha}"}),
    Route(project="team/*", ref="refs/heads/*", job="team-build", template="maven",
          parameters={"GIT_BRANCH": "{branch}", "EVENT": "{event}"}),
    Route(project="*", ref="refs/tags/*", job="release", template="maven",
          parameters={"TAG": "{tag}", "EVENT": "{event}"}),
)
SHA = "0123456789abcdef" * 2 + "01234567"


@pytest.mark.parametrize("push", [
    Push(EventKind.PUSH, "ci/maven-cache", "refs/heads/main", SHA, "alice"),
    Push(EventKind.PUSH, "Team/App", "refs/heads/x$(id);`id`", SHA, "bob"),  # any case
    Push(EventKind.TAG_PUSH, "other/lib", "refs/tags/v1.0", SHA + "ab" * 12, ""),
    Push(EventKind.PUSH, "team/app", "refs/heads/" + "é" * 122, SHA, "ü" * 100,
         hints={"CI_AUTOSCALER_CPU": "4", "CI_AUTOSCALER_MEMORY": "8Gi"}),
])
@pytest.mark.parametrize("installation", ["", "prod/cia"])
def test_every_request_the_routing_makes_is_made_again_the_same(push, installation):
    build = route_push(push, ROUTES, delivery="d", installation=installation, received_at=5.5)
    assert rebuilt(build.to_dict(), ROUTES, installation=installation) == build


def test_a_newer_release_field_is_kept():
    build = route_push(Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "a"), ROUTES,
                       delivery="d").to_dict() | {"priority": 3}
    assert rebuilt(build, ROUTES).to_dict() == build


def test_a_push_no_route_takes_is_ignored_as_the_webhook_ignores_it():
    build = route_push(Push(EventKind.PUSH, "ops/secrets", "refs/heads/main", SHA, "a"),
                       ROUTES + (Route(project="ops/*", job="ops"),), delivery="d").to_dict()
    assert rebuilt(build, ROUTES) == Ignored(
        "no route for project 'ops/secrets' ref 'refs/heads/main'")


@pytest.mark.parametrize("change, says", [
    ({"ref": "refs/heads/a\nb"}, "git does not allow"),
    ({"ref": "refs/heads/" + "a" * 250}, "longer than 255 bytes"),
    ({"sha": "A" * 40}, "not 40 or 64 lower-case hex"),
    ({"project": "team/../ci"}, "not a GitLab path"),
    ({"user": "a\x00b"}, "control character"),
    ({"ref": 5}, "ref is not a string"),
    ({"build_key": "cia:build:x"}, "build_key is not a build key"),
    ({"source": "jenkins"}, "is not a push's"),
    ({"received_at": True}, "received_at is not a number"),
])
def test_a_record_the_webhook_would_not_write_is_refused_with_the_reason(change, says):
    push = Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "alice")
    build = route_push(push, ROUTES, delivery="d").to_dict() | change
    with pytest.raises(ValueError, match=says):
        rebuilt(build, ROUTES)

"""workers.core.intake_records: an intake record's build is taken only if the routes make it;
every build the webhook's routing makes passes (the worker and web share one config)."""

import pytest

from workers.core.intake_records import build_problem
from workers.core.models import EventKind, Route
from workers.core.routing import Push, route_push

ROUTES = (
    Route(project="ci/maven-cache", ref="refs/heads/main", job="build",
          template="maven-cache-writer", parameters={"GIT_COMMIT": "{sha}"}),
    Route(project="team/*", ref="refs/heads/*", job="team-build", template="maven",
          parameters={"GIT_BRANCH": "{branch}"}),
    Route(project="*", ref="refs/tags/*", job="release", template="maven"),
)
SHA = "0123456789abcdef" * 2 + "01234567"


@pytest.mark.parametrize("push", [
    Push(EventKind.PUSH, "ci/maven-cache", "refs/heads/main", SHA, "alice"),
    Push(EventKind.PUSH, "Team/App", "refs/heads/x$(id);`id`", SHA, "bob"),  # any case
    Push(EventKind.TAG_PUSH, "other/lib", "refs/tags/v1.0", SHA + "ab" * 12, ""),
    Push(EventKind.PUSH, "team/app", "refs/heads/" + "é" * 122, SHA, "ü" * 100,
         hints={"CI_AUTOSCALER_CPU": "4"}),
])
def test_every_build_the_routing_makes_passes(push):
    build = route_push(push, ROUTES, delivery="d", installation="prod/cia")
    assert build_problem(build.to_dict(), ROUTES) is None


@pytest.mark.parametrize("change, says", [
    ({"job": "deploy-prod"}, "routes give job 'team-build'"),
    ({"template": "maven-cache-writer"}, "on template 'maven'"),  # the cache writer's, elsewhere
    ({"project": "ops/secrets"}, "no route"),
    ({"ref": "refs/heads/a\nb"}, "git does not allow"),
    ({"ref": "refs/heads/" + "a" * 250}, "longer than 255 bytes"),
    ({"sha": "A" * 40}, "not 40 or 64 lower-case hex"),
    ({"project": "team/../ci"}, "not a GitLab path"),
    ({"user": "a\x00b"}, "control character"),
    ({"ref": 5}, "ref is not a string"),
])
def test_a_forged_build_is_refused_with_the_reason(change, says):
    push = Push(EventKind.PUSH, "team/app", "refs/heads/main", SHA, "alice")
    build = route_push(push, ROUTES, delivery="d").to_dict() | change
    assert says in (build_problem(build, ROUTES) or "")

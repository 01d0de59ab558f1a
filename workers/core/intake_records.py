"""Whether an intake record's build is one this installation's routes make. Pure.

The web's Redis user may append to the intake, as every push it takes is appended there
(README, "Redis users"); so a stolen web pod could append a record naming any Jenkins job or
template, or fields the webhook would have ignored. The worker's mover builds a record only if
its fields pass the webhook's rules (workers.core.validation) and the first route matching its
project and ref gives its job and template; else the record is set aside (issue 17: a forged
record made the worker trigger the job `deploy-prod` with its own Jenkins user).
"""

from typing import Any

from workers.core.models import Route
from workers.core.routing import first_route
from workers.core.validation import project_problem, ref_problem, sha_problem, user_problem


def build_problem(build: dict[str, Any], routes: list[Route] | tuple[Route, ...]) -> str | None:
    """Why the build of an intake record is not one the routes make, or None."""
    for check, name in ((ref_problem, "ref"), (sha_problem, "sha"),
                        (project_problem, "project"), (user_problem, "user")):
        value = build.get(name)
        if not isinstance(value, str):
            return f"{name} is not a string"
        if problem := check(value):
            return problem
    route = first_route(routes, project=build["project"], ref=build["ref"])
    if route is None:
        return f"no route for project {build['project']!r} ref {build['ref']!r}"
    if (build.get("job"), build.get("template")) != (route.job, route.template):
        return (f"the routes give job {route.job!r} on template {route.template!r}, not "
                f"{build.get('job')!r} on {build.get('template')!r}")
    return None

"""An intake record's build request made anew from its push, with the routes of now. Pure.

The web's Redis user may append to the intake, as every push it takes is appended there
(README, "Redis users"); so a stolen web pod could append a record naming any Jenkins job,
template or parameter (issue 17: a forged record made the worker trigger the job `deploy-prod`
with its own Jenkins user). And a real push may wait in the intake or a web pod's spool
through a Redis outage, or a worker down for an hour, while the routes change (a new release
renames a job). So the worker trusts of a record only the push's own fields, checked as the
webhook checks them (workers.core.validation), and makes the request from them with its own
routes (routing.route_push), as the webhook would now: a forged job, template, parameter or
agent label is not used, a push its routes still match is built as they say now, and one that
no route matches any more is ignored ("no route", as the webhook answers it; issue 16: no
push the routes take is lost).
"""

import re
from dataclasses import replace
from typing import Any

from workers.core.hints import HINTS, hint_parameters
from workers.core.models import BuildRequest, EventKind, Route, Source
from workers.core.routing import Ignored, Push, route_push
from workers.core.validation import project_problem, ref_problem, sha_problem, user_problem

# keys.build_key's digest (20 hex); any length of lower-case hex up to a sha256's is taken
_KEY = re.compile(r"[0-9a-f]{1,64}")
_TAG_PREFIX = "refs/tags/"
# what the request is made of anew (the rest of a record's fields are a newer release's)
_MADE = frozenset({"build_key", "agent_name", "source", "project", "ref", "sha", "user", "job",
                   "template", "parameters", "received_at", "node_label"})


def rebuilt(build: Any, routes: list[Route] | tuple[Route, ...], *,
            installation: str = "") -> BuildRequest | Ignored:
    """The request the routes make now of the push an intake record's `build` holds (keyed by
    the record's build key, which the web's push marked its run with), or Ignored when no
    route matches its project and ref any more. Raises ValueError for a record the webhook
    would not have written (a field missing, of another type, or breaking the webhook's rules).

    Taken from the record: the push's project, ref, sha and user (checked), when it was
    received, and its size hints (CI_AUTOSCALER_CPU/MEMORY, read as quantities anew as a push
    option's are: core.hints). Its kind (push or tag push) is its ref's, as GitLab sends them.
    A newer release's fields are kept as they are, for its workers (BuildRequest.newer)."""
    if not isinstance(build, dict):
        raise ValueError("the build is not an object")
    for check, name in ((ref_problem, "ref"), (sha_problem, "sha"),
                        (project_problem, "project"), (user_problem, "user")):
        value = build.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name} is not a string")
        if problem := check(value):
            raise ValueError(problem)
    key, received_at = build.get("build_key"), build.get("received_at")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError("build_key is not a build key (lower-case hex)")
    if build.get("source") != str(Source.GITLAB):
        raise ValueError(f"source {build.get('source')!r} is not a push's")
    if not isinstance(received_at, int | float) or isinstance(received_at, bool):
        raise ValueError("received_at is not a number")
    parameters = build.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    hints = hint_parameters({name: value for name, value in parameters.items()
                             if name in HINTS and isinstance(value, str)})
    ref = build["ref"]
    push = Push(EventKind.TAG_PUSH if ref.startswith(_TAG_PREFIX) else EventKind.PUSH,
                build["project"], ref, build["sha"], build["user"], hints=hints)
    made = route_push(push, routes, received_at=float(received_at), commit=key,
                      installation=installation)
    if isinstance(made, Ignored):
        return made
    return replace(made, newer={name: value for name, value in build.items()
                                if name not in _MADE})

"""Which project the catch-up follows under each name the config gives: its numeric id, which
a rename or move keeps, and its current path, which its webhooks' pushes carry and its builds
are keyed by (`ProjectRef`); when to ask GitLab again, what its memory is kept under, and the
routes its heads are decided by. Pure decisions (the lookup: workers.engine.project_lookup).
"""

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from workers.core.models import Route
from workers.core.routing import project_matches

# The longest a project's id and path, as GitLab gave them for the path the config names,
# are taken without asking again; a pass that finds a changed head asks at once (its builds are
# keyed by the path). So a new project made at a moved project's old path is caught up on
# within this time, at one call per project per period (each name at its own time in it).
RESOLVE_SECONDS = 900


@dataclass(frozen=True)
class ProjectRef:
    """A project the catch-up looks at: `name` as the config (or its group's listing) names
    it, and what GitLab answered for it at `resolved_at` (GET /projects/:id): its numeric `id`,
    which a rename or move keeps, and its `path` (path_with_namespace) then, which its
    webhooks' pushes carry and its builds are keyed by. GitLab follows a renamed project's old
    path (API::Helpers#find_project: find_by_full_path(id, follow_redirects: true)) until a
    project or group is made at it (Route#delete_conflicting_redirects); `followed`: the name
    found nothing any more, and the project it last named was found by its id."""

    name: str
    id: int
    path: str
    resolved_at: float
    followed: bool = False

    @property
    def renamed(self) -> bool:
        """GitLab has the project under another path than the name (not the case alone); a
        numeric id names the project whatever its path."""
        return not (self.name.isascii() and self.name.isdecimal()) and \
            self.path.lower() != self.name.lower()


def resolution_due(ref: ProjectRef | None, now: float) -> bool:
    """Whether to ask GitLab again which project a name leads to: never asked, or more than
    RESOLVE_SECONDS ago (or, the clock set back, in the future), or the name's own time in
    each RESOLVE_SECONDS (resolve_phase) came since. So the names looked up in one pass (the
    first, after a start) fall due spread over the next RESOLVE_SECONDS, not in one pass,
    each once per RESOLVE_SECONDS still."""
    if ref is None or not 0 <= now - ref.resolved_at < RESOLVE_SECONDS:
        return True
    phase = resolve_phase(ref.name)
    return (now - phase) // RESOLVE_SECONDS != (ref.resolved_at - phase) // RESOLVE_SECONDS


def resolve_phase(name: str) -> int:
    """A name's time in each RESOLVE_SECONDS, in seconds: the same in every process and
    after a restart (crc32, not Python's salted hash), spread evenly over the names."""
    return zlib.crc32(name.lower().encode()) % RESOLVE_SECONDS


def memory_name(ref: ProjectRef) -> str:
    """What the catch-up's memory of a project's heads is kept under: its id, so that a rename
    keeps it and a new project at the old path never inherits it (its heads would all be new:
    every branch built as a missed push)."""
    return f"id:{ref.id}"


def path_memory_adoptable(ref: ProjectRef) -> bool:
    """Whether the memory versions before kept under the name (its path) is this project's:
    only when the name still leads to the project under that very path, never renamed nor
    followed by its id (it may have been another project's then)."""
    return not ref.followed and not ref.renamed


def routes_for(ref: ProjectRef, routes: Iterable[Route]) -> tuple[Route, ...]:
    """The routes the project's heads are decided by: every route, in order, as its webhooks'
    pushes are; then, for a project renamed or moved while a route names it by its old path
    (the name) only, each such route made to match its current path. A push no route
    matches under the new path is answered "no route" by the webhook (so never built twice),
    and is built by the catch-up under that path, by the route of the old one: no push lost
    (issue 16) until the routes name the new path."""
    routes = tuple(routes)
    if not ref.renamed:
        return routes
    return routes + tuple(
        r.model_copy(update={"project": ref.path}) for r in routes
        if project_matches(ref.name, r.project) and not project_matches(ref.path, r.project))

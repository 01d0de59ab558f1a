"""Which project each name the catch-up's config gives leads to now: its numeric id, which a
rename or move keeps, and its current path, which its webhooks' pushes carry and its builds
are keyed by. Kept in Redis (workers.adapters.catchup_store) and asked of GitLab again at the
name's own time in each RESOLVE_SECONDS or when a pass finds a changed head; a name GitLab no
longer finds (another group or project took the path) is followed by the id it led to. A
change is told once, with what the operator should do about it.
"""

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from workers.adapters import gitlab as gitlab_api
from workers.core import catchup as core, catchup_project as projects
from workers.core.models import Route

if TYPE_CHECKING:
    from workers.engine.catchup import CatchUp

log = logging.getLogger("ci_autoscaler.catchup")


def resolve(cu: "CatchUp", name: str, now: float, *, again: bool = False) -> projects.ProjectRef:
    """The project the name leads to (its id and current path): as last looked up, unless the
    lookup is due (projects.resolution_due) or `again`; then GitLab is asked (one call), and the
    answer kept. When GitLab finds nothing at the name any more (another group or project took
    a moved project's old path, Route#delete_conflicting_redirects), the project it last led to
    is asked for by its id, and followed. Raises ProjectNotFound when neither is found."""
    known = cu.store.project_ref(name)
    if not again and not projects.resolution_due(known, now):
        return known
    try:
        found, followed = gitlab_api.project_identity(gl=cu.gl, project=name), False
    except gitlab_api.ProjectNotFound:
        if known is None:
            raise
        found, followed = gitlab_api.project_identity(gl=cu.gl, project=known.id), True
    ref = projects.ProjectRef(name, found.id, found.path, now, followed)
    _tell_change(known, ref, cu.config.routes)
    cu.store.set_project_ref(ref, ttl_seconds=cu.settings.build_ttl_seconds)
    return ref


def _tell_change(known: projects.ProjectRef | None, ref: projects.ProjectRef,
                 routes: Iterable[Route]) -> None:
    """A log line when the project a name leads to, or its path, differs from the last
    lookup's (so once, not every pass)."""
    extra = {"project": ref.name, "project_id": ref.id, "path": ref.path}
    if known is not None and known.id != ref.id:
        log.warning("the path the config names now leads to another project: its refs get a "
                    "first pass (recorded, not built); the project it led to before is no "
                    "longer caught up under this name",
                    extra={**extra, "project_id_before": known.id, "path_before": known.path})
    elif ref.followed and not (known and known.followed and known.path == ref.path):
        log.warning("GitLab finds no project at the path the config names any more (a group "
                    "or project took it): the project it led to is followed by its id; name "
                    "it by its new path in the config", extra=extra)
    elif ref.renamed and (known is None or known.path != ref.path):
        routes = tuple(routes)
        if len(projects.routes_for(ref, routes)) > len(routes):
            log.warning("the project the config names was renamed or moved, and a route names "
                        "it by its old path only: its webhooks' pushes no route matches under "
                        "its new path are answered \"no route\", and the catch-up builds them "
                        "a pass late, under its new path, by the route of its old one; route "
                        "its new path", extra=extra)
        elif core.routed(ref.path, routes):
            log.info("the project the config names was renamed or moved: its builds are "
                     "keyed by its new path, as its webhooks' pushes", extra=extra)
        else:  # its webhooks' pushes are not built either ("no route for project")
            log.warning("the project the config names was renamed or moved, and no route "
                        "matches its new path: none of its pushes is built; route its new "
                        "path", extra=extra)

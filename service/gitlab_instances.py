"""The GitLab instance a push came from (X-Gitlab-Instance), checked at the webhook edge
(workers.core.gitlab_instance has why). With CI_AUTOSCALER_GITLAB_INSTANCE set, a push from
another instance is ignored: answered 200 (a 4xx would count towards GitLab disabling the
hook), logged as a rejection. Without it, the first instance a web process sees is taken for
the one, and a push from a second is stored as before, with a warning, once per instance and
process: its project paths and ids may be other projects' on the first."""

import logging
import threading
from typing import Any

from workers.core.gitlab_instance import foreign, instance_of

log = logging.getLogger("ci_autoscaler.webhooks")
# Instances warned of per process: the header is the sender's, so a token holder sending a
# new value each push grew the set and logged a warning a push, without bound.
WARNED_MOST = 16


class InstanceGuard:
    def __init__(self, served: str) -> None:
        self.served = instance_of(served)
        self._first = ""
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def refused(self, environ: dict[str, Any]) -> str | None:
        """Why this push is not ours (a configured instance only); None to take it."""
        sent = environ.get("HTTP_X_GITLAB_INSTANCE")
        if self.served:
            return foreign(self.served, sent)
        seen = instance_of(sent)
        if not seen:
            return None
        with self._lock:
            first = self._first = self._first or seen
            if seen == first or seen in self._warned or len(self._warned) >= WARNED_MOST:
                return None
            self._warned.add(seen)
        log.warning("pushes from two GitLab instances: one installation serves one (routes, "
                    "build keys and catch-up know a project by its path, commit statuses by "
                    "its id, so a group/app or a project id of one instance is taken for the "
                    "other's); set "
                    "CI_AUTOSCALER_GITLAB_INSTANCE to the instance this installation serves, "
                    "and run one installation per instance",
                    extra={"instance": seen[:200], "first_instance": first})
        return None

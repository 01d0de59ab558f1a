"""The lease a task holds on a build while it provisions or releases it (moved from
workers.engine.tasks): two tasks never provision one build at once."""

from workers import runtime
from workers.adapters.lease import Lease
from workers.core.errors import RetryableError


class BeingProvisioned(RetryableError):
    """Another task holds the build's provision lease: it is deciding the build now, and
    settles it (placed, or back in the waiting set). Expected whenever re-drives overlap (a
    release's, the next release's, the reconcile pass's, a provision's once-more), so a
    re-drive leaves the build to that task without counting an error or logging a line for it
    (workers.engine.redrive).

    `by_task`: held by a task that renews it (a provision; a release, which ends the build).
    Not so (a short step of the reconcile pass's repairs, a fail: workers.engine.failures,
    lost_triggers, blocked_builds), the holder provisions nothing: a provision job left the
    build to it, and the build sat with no job until the reconcile pass found it stalled, a
    lease period later (ten while the queue holds jobs); its job is retried instead."""

    def __init__(self, message: str, *, by_task: bool = True):
        super().__init__(message)
        self.by_task = by_task


def lease_key(rt: runtime.Runtime, build_key: str) -> str:
    return rt.state.prefix + "provisioning:" + build_key


def provision_lease(rt: runtime.Runtime, build_key: str, *, renewed: bool = False) -> Lease:
    """Held while a task provisions the build: two tasks never provision one build at once, and
    a build whose provision died with its worker is known by the lease having lapsed. Kept by
    a heartbeat for as long as the task runs (workers.concurrency.heartbeat): a provision
    slower than the lease's time to live does not lose it to a second task. `renewed`: taken by
    a task that keeps it so, whose death is then seen within seconds (lease.free_if_stale)."""
    return Lease(rt.state.redis, lease_key(rt, build_key), rt.settings.provision_lease_seconds,
                 renewed=renewed)

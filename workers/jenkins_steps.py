"""The steps of a reconcile pass that ask Jenkins, kept apart from those that need no Jenkins.

A reconcile pass runs its steps in one order, each seeing what the one before did. The steps
that ask Jenkins go through one ``JenkinsSteps``: the first that fails (Jenkins down or
restarting: `Unavailable`; or any other error) stops them for the pass, and the Jenkins steps
after it are skipped (the next pass tries again), while the steps that need no Jenkins still
run: deleting stray pods, releasing settled reservations, freeing stale slots, syncing
scale-up pods, writing the capacity state (workers.reconcile). The error is kept, for the
pass to count and report once; `Unavailable` is recorded at once as Jenkins seen away
(workers.agent_starts.jenkins_away), so an agent's connect clock waits whatever comes next.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from workers.adapters.redis_state import RedisState
from workers.agent_starts import jenkins_away
from workers.core.errors import Unavailable

T = TypeVar("T")


class JenkinsSteps:
    """One pass's Jenkins steps: each runs while none before it failed."""

    def __init__(self, state: RedisState, now: float):
        self._state, self._now = state, now
        self.error: Exception | None = None  # the first failure; later steps skipped
        self.skipped = 0  # how many steps were skipped after it

    @property
    def ok(self) -> bool:
        """No Jenkins step of the pass has failed (so far)."""
        return self.error is None

    def may_run(self) -> bool:
        """Whether a Jenkins step may run now; if not, it is counted as skipped (for a step
        that handles its own errors: run it only if this says so)."""
        if self.error is not None:
            self.skipped += 1
        return self.error is None

    def run(self, step: Callable[..., T], *args: Any, skipped: T, **kwargs: Any) -> T:
        """step(*args, **kwargs); `skipped` instead when a step before failed, or when this
        one fails (its error kept, and the steps after it skipped)."""
        if not self.may_run():
            return skipped
        try:
            return step(*args, **kwargs)
        except Exception as err:  # kept: the pass counts and reports it once
            self.error = err
            if isinstance(err, Unavailable):  # agents cannot connect meanwhile
                jenkins_away.record(self._state, self._now)
            return skipped

    def raise_error(self) -> None:
        """Raise the failure of the pass's Jenkins steps, if one failed."""
        if self.error is not None:
            raise self.error

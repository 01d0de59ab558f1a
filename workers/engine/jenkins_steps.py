"""The steps of a reconcile pass that ask Jenkins, kept apart from those that need no Jenkins.

A reconcile pass runs its steps in one order, each seeing what the one before did. The steps
that ask Jenkins go through one ``JenkinsSteps``. When one fails because Jenkins cannot be
talked to now (down or restarting: `Unavailable`; taking calls but not answering them in time,
or asking us to slow down: `Overloaded`; or refusing our credentials: `Unauthorized`, which
every call would meet the same), the Jenkins steps after it are skipped (the next pass
tries again), so a Jenkins that is away or struggling is not hammered; the steps that need no
Jenkins still run: deleting stray pods, releasing settled reservations, freeing stale slots,
syncing scale-up pods, writing the capacity state (workers.engine.reconcile). Any other error (a 403
or a 500 on one object, a malformed answer, a bug) is that step's own: it is logged, and the
next Jenkins step runs all the same; were it to stop them, one build's refused queue item would
stop connect timeouts, re-drives and the warm pools on every pass while Jenkins is fine.
The first error is kept, for the pass to count and report once; `Unavailable` is recorded at
once as Jenkins seen away (workers.agent_starts.jenkins_away), so an agent's connect clock
waits whatever comes next; `Unauthorized` is not: agents connect with their own secrets.
"""

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from workers.adapters.redis_state import RedisState
from workers.agent_starts import jenkins_away
from workers.core.errors import CIAutoscalerError, Overloaded, Unauthorized, Unavailable, \
    shown

T = TypeVar("T")
log = logging.getLogger("ci_autoscaler.jenkins_steps")


def stops_the_rest(err: Exception) -> bool:
    """Whether this error of a step means Jenkins cannot be asked anything more this pass."""
    return isinstance(err, (Unavailable, Overloaded, Unauthorized))


class JenkinsSteps:
    """One pass's Jenkins steps: each runs unless one before it found Jenkins away."""

    def __init__(self, state: RedisState, now: float):
        self._state, self._now = state, now
        self.error: Exception | None = None  # the first failure of a step
        self.stopped: Exception | None = None  # the failure that skipped the steps after it
        self.failed = 0  # how many steps failed
        self.skipped = 0  # how many steps were skipped after `stopped`

    def may_run(self) -> bool:
        """Whether a Jenkins step may run now; if not, it is counted as skipped (for a step
        that handles its own errors: run it only if this says so)."""
        if self.stopped is not None:
            self.skipped += 1
        return self.stopped is None

    def skip(self, value: T) -> T:
        """A step not run because one it needs failed in this pass: counted as skipped."""
        self.skipped += 1
        return value

    def run(self, step: Callable[..., T], *args: Any, skipped: T, **kwargs: Any) -> T:
        """step(*args, **kwargs); `skipped` instead when a step before found Jenkins away, or
        when this one fails (its error kept; the steps after it skipped only if Jenkins is
        away: stops_the_rest)."""
        if not self.may_run():
            return skipped
        try:
            return step(*args, **kwargs)
        except Exception as err:  # kept: the pass counts and reports it once
            self.failed += 1
            self.error = self.error or err
            if stops_the_rest(err):
                self.stopped = err
                if isinstance(err, Unavailable):  # agents cannot connect meanwhile
                    jenkins_away.record(self._state, self._now)
            if self.error is not err:  # the pass reports the first; the others are logged
                log.warning("reconcile Jenkins step failed",
                            exc_info=None if isinstance(err, CIAutoscalerError) else err,
                            extra={"step": _name(step), "error": shown(err)})
            return skipped

    def raise_error(self) -> None:
        """Raise the first failure of the pass's Jenkins steps, if one failed."""
        if self.error is not None:
            raise self.error


def _name(step: Callable[..., Any]) -> str:
    return getattr(step, "__qualname__", None) or type(step).__name__

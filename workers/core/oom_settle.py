"""Whether a build's final commit status waits for its OOM kill to be recorded. Pure.

The kubelet OOM-kills the build container; the worker's watch notes it on the run
(workers.job_history.watch, ``usage:run:<agent>`` oom_limit) and the build's release folds it
into the record (workers.job_history.learn: OOM_FIELD) at its very end, after the pod and
the Jenkins node are deleted. Jenkins' result (ABORTED, FAILURE) is written before that, at
the release's start (workers.tasks.release_agent). A status sent in between (the touch of
the result, the sender's sweep, or a release that failed on the pod's delete and waits for
its RQ retry) read "canceled" or a plain "failed", and GitLab keeps the first final status
of a build: a second one is refused (400 "Cannot transition status via :drop from
:failed", CommitStatus' state machine; workers.core.commit_status._NEXT). So while the run
shows an OOM kill the record does not, the final status waits, for OOM_SETTLE_SECONDS at
most after the build's end: a release that never comes back does not withhold it for ever.
"""

from collections.abc import Mapping

from workers.core.commit_status import FINAL, OOM_FIELD, State

# The longest a final status waits for the release to record an OOM kill the watch saw,
# counted from the build's end (Jenkins' COMPLETED received, else its release): a release
# takes seconds, and RQ retries a failed one after 5, 15, 30 and 60 s (110 s in all:
# workers.adapters.redis_state.JOB_RETRY), each try taking seconds more.
OOM_SETTLE_SECONDS = 180.0
OOM_POLL_SECONDS = 1.0  # a held build is looked at again this often


def ended_at(record: Mapping[str, str]) -> float | None:
    """When the build ended: Jenkins' COMPLETED received (the web's receipt time), else its
    release, else its record's last change; None when none is readable."""
    for name in ("finished_at", "released_at", "updated_at"):
        try:
            if record.get(name):
                return float(record[name])
        except ValueError:
            continue
    return None


def may_wait_for_oom(record: Mapping[str, str], state: State, *, now: float) -> bool:
    """Whether posting `state` now could pre-empt the OOM kill's text: a final state, the
    kill not in the record, and one that would change it (no SUCCESS, which stands, and no
    agent failure, which is told first: commit_status._ended_text), within the bound. Only
    then is the run's OOM mark worth a read (oom_pending)."""
    if state not in FINAL or record.get(OOM_FIELD) or record.get("fail_reason"):
        return False
    if (record.get("result") or "").upper() == "SUCCESS":
        return False
    end = ended_at(record)
    return end is not None and now - end < OOM_SETTLE_SECONDS

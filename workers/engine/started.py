"""A Jenkins STARTED, applied by the worker's intake mover: the build marked running, with its
run's page, and its commit status touched.

The web wrote these itself once, so its Redis user could write every build's record (issue 17:
a stolen web pod could HSET a build's `request`, which the worker's repairs trigger Jenkins
from, and plant live agents). It now appends a record to the intake (`record`), as it does an
ending notification; the mover (workers.engine.intake) reads it as a claim anyone holding the
web's Redis user could have written, and checks it as the web checks a notification: the build
is found anew by the run it names, its state is there, no other run is its own, and the job
named is the build's (or that job moved); the run's page is taken only under this worker's
Jenkins URL (workers.engine.run_links).
"""

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from workers import commit_statuses
from workers.adapters.redis_state import RedisState
from workers.core.notifications import job_matches, moved_job, other_run
from workers.engine.run_links import run_page

log = logging.getLogger("ci_autoscaler.intake")
KIND = "started"  # the record's key beside "delivery" ("build": a push, "release": an end)


def record(delivery_id: str, *, build_key: str, job: str, number: int, agent: str | None,
           queue_id: int | None, build_url: str, received_at: float) -> bytes:
    """An intake record of a STARTED: what the notification said of its run (the job's full
    name, the run's number, the agent and queue item it names, its page), the build the web
    found for it, and when the web received it (the build's `started` stage: the mover may
    apply it after the run's COMPLETED was received, whose `finished_at` is the web's time too)."""
    return orjson.dumps({"delivery": delivery_id, KIND: {
        "build_key": build_key, "job": job, "number": number, "agent": agent,
        "queue_id": queue_id, "build_url": build_url, "received_at": received_at}})


@dataclass(frozen=True)
class Started:
    """A claimed STARTED record, its fields checked for their types."""

    raw: bytes
    build_key: str
    job: str
    number: int
    agent: str | None
    queue_id: int | None
    build_url: str
    received_at: float | None = None  # None: written by a web before 2026-12-06


def parse(raw: bytes, fields: Any) -> Started:
    """A STARTED record's fields; TypeError or ValueError for one the web does not write (set
    aside by the mover, logged)."""
    if not isinstance(fields, dict):
        raise TypeError("a started record is not an object")
    key, job, number = fields.get("build_key"), fields.get("job"), fields.get("number")
    agent, queue_id = fields.get("agent"), fields.get("queue_id")
    url = fields.get("build_url")
    if not isinstance(key, str) or not isinstance(job, str) or not isinstance(url, str):
        raise TypeError("a started record's build_key, job and build_url are not strings")
    for name, value in (("number", number), ("queue_id", queue_id)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TypeError(f"a started record's {name} is not a number")
    if number is None:
        raise ValueError("a started record without its run's number")
    if agent is not None and not isinstance(agent, str):
        raise TypeError("a started record's agent is not a string")
    at = fields.get("received_at")
    if at is not None and (not isinstance(at, (int, float)) or isinstance(at, bool)):
        raise TypeError("a started record's received_at is not a number")
    return Started(raw, key, job, number, agent, queue_id, url,
                   float(at) if at is not None else None)


@dataclass(frozen=True)
class Applied:
    """What became of a STARTED: `marked` running, or not, and why."""

    marked: bool
    reason: str


def apply(state: RedisState, started: Started, *, jenkins_url: str,
          public_url: str = "") -> Applied:
    """Mark the build running, as the web did (status running unless it has finished, the
    run's number, its page), after the web's own checks made again on the worker's reading
    of Redis; raises RetryableError while Redis is away (the record stays claimed)."""
    key = state.build_for_notification(job=started.job, number=started.number,
                                       agent=started.agent, queue_id=started.queue_id)
    if key is None or key != started.build_key:
        return Applied(False, f"the run names build {key!r}, not the record's "
                              f"{started.build_key!r}")
    status, number, job = state.build_fields([key], "status", "jenkins_build", "job")[0]
    if status is None:  # expired, or never ours: a hash is not made again
        return Applied(False, "the build has no state")
    if other := other_run(number, started.number):
        return Applied(False, other.reason)
    if (refused := job_matches(job, started.job)) and not moved_job(job, started.job):
        return Applied(False, refused.reason)
    state.mark_running(key, jenkins_build=started.number, build_url=run_page(
        started.build_url, jenkins_url, job or started.job, started.number, public_url),
        at=started.received_at)
    commit_statuses.touch(state, key)  # running, with the build's page
    return Applied(True, "marked running")

"""The run-time check of a build's Jenkins job, before its first trigger. The job's definition
is read once per job per JOB_DEFINITION_CACHE_SECONDS in each process; a job that cannot take
our builds (missing, disabled, not parameterized, not declaring CI_AUTOSCALER_AGENT and
CI_AUTOSCALER_BUILD_KEY) refuses the build for good, and the parameters Jenkins would drop are
logged as a warning once per reading (Jenkins drops them without a word). A kept reading that
refuses is read again before it fails a build: the operator may have fixed the job since (run
a new Pipeline once, enabled it, created it), and failing for good is not undone.
"""

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.core.errors import PermanentError
from workers.core.jenkins_jobs import JobDefinition, dropped, refusal
from workers.core.ports import Jenkins

log = logging.getLogger("ci_autoscaler.checks.jobs")
JOB_DEFINITION_CACHE_SECONDS = 60.0


@dataclass
class _Reading:
    read_at: float
    definition: JobDefinition | None
    warned: set[tuple[str, ...]] = field(default_factory=set)  # dropped sets logged already


# Per Jenkins (an adapter or the simulation), per job: gone with the Jenkins object.
_readings: "weakref.WeakKeyDictionary[Any, dict[str, _Reading]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _reading(jenkins: Jenkins, job: str, now: float, *, fresh: bool = False) -> _Reading:
    with _lock:
        reading = _readings.setdefault(jenkins, {}).get(job)
    if reading is not None and not fresh and now - reading.read_at < JOB_DEFINITION_CACHE_SECONDS:
        return reading
    reading = _Reading(now, jenkins.job_definition(job))  # outside the lock: an HTTP call
    with _lock:
        _readings.setdefault(jenkins, {})[job] = reading
    return reading


def definition(jenkins: Jenkins, job: str, *, now: float | None = None) -> JobDefinition | None:
    """The job's definition, read from Jenkins at most once per cache period."""
    return _reading(jenkins, job, time.monotonic() if now is None else now).definition


def forget(jenkins: Jenkins, job: str | None = None) -> None:
    """Read the job (every job, when None) from Jenkins again next time: Jenkins refused a
    build the reading let through, so the job changed."""
    with _lock:
        if job is None:
            _readings.pop(jenkins, None)
        else:
            _readings.get(jenkins, {}).pop(job, None)


def before_trigger(jenkins: Jenkins, job: str, parameters: Mapping[str, str], *,
                   context: Mapping[str, Any] | None = None, now: float | None = None) -> None:
    """Raise PermanentError, with the reason, when the job cannot take the build; warn
    (once per reading) about the parameters Jenkins will drop."""
    now = time.monotonic() if now is None else now
    reading = _reading(jenkins, job, now)
    refused = refusal(job, reading.definition)
    if refused is not None and reading.read_at < now:  # kept: the job may be fixed since
        reading = _reading(jenkins, job, now, fresh=True)
        refused = refusal(job, reading.definition)
    if refused is not None:
        raise PermanentError(refused.reason)
    assert reading.definition is not None  # refusal() says so
    lost = tuple(dropped(reading.definition, parameters))
    with _lock:
        first = lost and lost not in reading.warned
        reading.warned.add(lost)
    if first:
        log.warning("Jenkins will drop parameters the job does not declare",
                    extra={**(context or {}), "job": job, "parameters": list(lost)})

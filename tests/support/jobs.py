"""Task functions for queue tests: what a stock RQ worker imports and runs by dotted name."""

import os
import threading
from pathlib import Path

import redis


def mark_done(*, redis_url: str, key: str) -> str:
    """Leaves a trace in Redis, so a test can see that a worker ran the job."""
    redis.Redis.from_url(redis_url).incr(key)
    return "done"


def worker_children() -> list[int]:
    """The child processes of the worker running this job: those of its main thread, where RQ
    forks its scheduler process."""
    pid = os.getpid()
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def always_fails(**_kwargs) -> None:
    raise RuntimeError("this task fails on purpose, so its retry policy applies")


def returns_retry(*, most: int, interval: int):
    """Asks RQ for a retry by returning one (RQ 3's `return Retry(...)`), not by raising."""
    from rq import Retry
    return Retry(max=most, interval=interval)


def fails_counted(*, redis_url: str, key: str, permanent: bool) -> None:
    """Counts its attempt in Redis, then fails: for good (PermanentError) or not."""
    from workers.core.errors import PermanentError

    redis.Redis.from_url(redis_url).incr(key)
    if permanent:
        raise PermanentError("this task is refused for good, on purpose")
    raise RuntimeError("this task fails on purpose, so its retry policy applies")


class Gate:
    """Jobs that wait here until the test opens it; it counts how many wait at once. The
    worker runs in the test's process (burst), so its job threads share this object."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.open = threading.Event()


GATES: dict[str, Gate] = {}


def new_gate(name: str) -> Gate:
    gate = GATES[name] = Gate()
    return gate


def wait_at_gate(*, gate: str) -> int:
    """Wait until the gate opens (back in Python every 50 ms, so a job timeout can land);
    the most jobs seen waiting at once."""
    g = GATES[gate]
    with g.lock:
        g.active += 1
        g.most = max(g.most, g.active)
    try:
        while not g.open.wait(0.05):
            pass
    finally:
        with g.lock:
            g.active -= 1
    return g.most


# The Jenkins API token of jenkins_nodes_at's client: a constant here, not an argument (RQ logs
# a failed job's arguments)
JENKINS_TOKEN = "jenkins-api-token-5e1f0c9d"


def jenkins_nodes_at(*, url: str) -> list[str]:
    """The real Jenkins adapter's read of the nodes of a Jenkins (or what answers at `url`)."""
    from workers.adapters.jenkins import JenkinsAdapter
    return JenkinsAdapter(url=url, user="ci", token=JENKINS_TOKEN).jenkins_nodes()


def kubernetes_refusal(*, cookie: str) -> None:
    """Raises the Kubernetes client's error as a call no adapter translated would: its text
    carries the answer's headers and body."""
    from kubernetes.client.exceptions import ApiException
    err = ApiException(status=422, reason="Unprocessable Entity")
    err.headers = {"Audit-Id": "1", "Set-Cookie": cookie}
    err.body = '{"kind": "Status", "message": "denied by a webhook"}'
    raise err

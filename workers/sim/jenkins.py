"""An in-process Jenkins: agents, a build queue, and builds that "run" once their agent's pod
is Running, then report through the Notification plugin's JSON to a callback (the demo posts
it to our own HTTP endpoint, exactly as the plugin would). An agent is online while its pod
runs (its process connected); a queued build can be cancelled, a running one aborted."""

import json
import logging
import random
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from workers.core.errors import PermanentError
from workers.core.jenkins_jobs import REQUIRED_PARAMETERS, JobDefinition
from workers.core.label_probe import PROBE_PREFIX
from workers.core.ports import (
    AgentActivity, BuildState, PodPhase, QueueItem, RunInfo, RunRef)
from workers.core.routing import AGENT_PARAMETER
from workers.sim.cluster import SimCluster

log = logging.getLogger("ci_autoscaler.sim.jenkins")
Notify = Callable[[dict[str, Any]], None]
# What every simulated job declares: ours, and the parameters of the demo's routes
# (workers/sim/data/demo.yaml). Like Jenkins, the simulation drops any other parameter.
SIM_JOB_PARAMETERS = (*REQUIRED_PARAMETERS, "GIT_COMMIT", "GIT_BRANCH", "GIT_TAG", "PROJECT")


@dataclass
class SimBuild:
    job: str
    number: int
    queue_id: int
    parameters: dict[str, str]
    state: str = "queued"  # queued -> running -> done, or queued -> cancelled
    result: str = "SUCCESS"
    ends_at: float = 0.0


# What hudson.Util.rawEncode leaves as it is besides letters and digits (its uriMap); it
# escapes the rest, "~" and non-ASCII (UTF-8) too.
_RAW_ENCODE_SAFE = "!@$&*()-_=+',."


def job_url(job: str) -> str:
    """A job's URL relative to Jenkins' root, as Jenkins gives it (Job.getUrl): "job/" and
    each name of "folder/name" escaped by Util.rawEncode ("~" too, which quote never escapes).
    """
    return "".join("job/" + quote(name, safe=_RAW_ENCODE_SAFE).replace("~", "%7E") + "/"
                   for name in job.split("/"))


def notification(build: SimBuild, phase: str, status: str | None,
                 base_url: str = "http://jenkins.sim") -> dict[str, Any]:
    """The Notification plugin's body for one phase of a build (null fields left out): the
    job's short name (JobState.name, Job.getName) and escaped URLs (Job.getUrl, Run.getUrl,
    Run.getAbsoluteUrl)."""
    run = f"{job_url(build.job)}{build.number}/"
    body: dict[str, Any] = {
        "full_url": f"{base_url}/{run}", "number": build.number,
        "queue_id": build.queue_id, "phase": phase, "url": run,
        "parameters": dict(build.parameters)}
    if status is not None:
        body["status"] = status
    return {"name": build.job.rsplit("/", 1)[-1], "url": job_url(build.job), "build": body}


def http_notifier(url: str, token: str | None, timeout: float = 5.0) -> Notify:
    """Post each notification to `url` as the plugin does (token in the query string)."""
    target = f"{url}?token={token}" if token else url

    def post(body: dict[str, Any]) -> None:
        req = urllib.request.Request(target, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json;charset=UTF-8"})
        try:
            urllib.request.urlopen(req, timeout=timeout).close()
        except OSError as err:  # the plugin does not retry by default either
            log.warning("notification not delivered", extra={"error": type(err).__name__})
    return post


class SimJenkins:
    """Implements the Jenkins port in memory; thread-safe."""

    def __init__(self, *, cluster: SimCluster, notify: Notify,
                 build_seconds: tuple[float, float] = (2.0, 5.0), seed: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.cluster = cluster
        self.notify = notify
        self.build_seconds = build_seconds
        self.clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.nodes: dict[str, str] = {}  # name -> secret
        # name -> label: a build placed again has a node of a new name with its first agent's
        # name as label, which its CI_AUTOSCALER_AGENT names (workers.engine.agent_names)
        self.labels: dict[str, str] = {}
        self.builds: list[SimBuild] = []
        self._numbers: dict[str, int] = {}
        self._queue_ids = 0
        self.disabled: set[str] = set()  # agents taken temporarily offline
        self.probe = False  # whether the label probe is registered (workers.engine.label_probe)

    def ensure_node(self, name: str, *, label: str, remote_fs: str) -> bool:
        with self._lock:
            if name in self.nodes:
                return False
            self.nodes[name] = secrets.token_hex(32)
            self.labels[name] = label
            return True

    def agent_secret(self, name: str) -> str:
        with self._lock:
            if name not in self.nodes:
                raise PermanentError(f"no Jenkins node {name}")
            return self.nodes[name]

    def trigger_build(self, job: str, parameters: dict[str, str],
                      find_by: tuple[str, str] | None = None, agent: str | None = None) -> int:
        with self._lock:  # never fails, so never retried: find_by has nothing to find
            self._queue_ids += 1
            self._numbers[job] = self._numbers.get(job, 0) + 1
            declared = {k: v for k, v in parameters.items() if k in SIM_JOB_PARAMETERS}
            self.builds.append(SimBuild(job=job, number=self._numbers[job],
                                        queue_id=self._queue_ids, parameters=declared))
            return self._queue_ids

    def job_definition(self, job: str) -> JobDefinition | None:
        return JobDefinition(name=job, kind="sim", parameters=SIM_JOB_PARAMETERS)

    def delete_node(self, name: str) -> bool:
        with self._lock:
            self.disabled.discard(name)
            self.labels.pop(name, None)
            return self.nodes.pop(name, None) is not None

    def list_agents(self) -> list[str]:
        with self._lock:
            return sorted(self.nodes)

    def legacy_agents(self) -> list[str]:
        return []  # one installation, always this version

    def jenkins_nodes(self) -> list[str]:
        with self._lock:
            return sorted(self.nodes) + ([PROBE_PREFIX] if self.probe else [])

    def ensure_label_probe(self) -> bool:
        # never asked: every queued build of the simulator names its agent's label
        with self._lock:
            made, self.probe = not self.probe, True
            return made

    def delete_label_probe(self) -> bool:
        with self._lock:
            deleted, self.probe = self.probe, False
            return deleted

    def queue_items(self) -> list[QueueItem]:
        with self._lock:
            return [QueueItem(id=b.queue_id, job=b.job, parameters=dict(b.parameters),
                              why=f"Waiting for next available executor on "
                                  f"‘{b.parameters.get(AGENT_PARAMETER, '')}’")
                    for b in self.builds if b.state == "queued"]

    def queue_item(self, queue_item: int) -> QueueItem | None:
        with self._lock:
            build = next((b for b in self.builds if b.queue_id == queue_item), None)
            return None if build is None else QueueItem(
                id=build.queue_id, job=build.job, parameters=dict(build.parameters))

    def quieting_down(self) -> bool:
        return False  # the simulator's Jenkins never prepares for shutdown

    def session(self, max_age: float = 0.0) -> str:
        return "sim"  # the simulator's Jenkins never restarts

    def build_state(self, job: str, queue_item: int | None,
                    number: int | None = None,
                    since: float | None = None) -> tuple[BuildState, int | None]:
        with self._lock:
            build = next((b for b in self.builds if b.queue_id == queue_item
                          or (b.job == job and b.number == number)), None)
        if build is None:
            return BuildState.UNKNOWN, number
        state = {"queued": BuildState.QUEUED, "running": BuildState.RUNNING,
                 "cancelled": BuildState.CANCELLED}.get(build.state, BuildState.FINISHED)
        return state, None if state in (BuildState.QUEUED, BuildState.CANCELLED) \
            else build.number

    def run_info(self, job: str, number: int) -> RunInfo | None:
        with self._lock:
            build = next((b for b in self.builds if b.job == job and b.number == number), None)
            if build is None:
                return None
            finished = build.state not in ("queued", "running", "cancelled")
            return RunInfo(finished=finished, parameters=dict(build.parameters),
                           result=build.result if finished else None,
                           queue_id=build.queue_id)  # a Pipeline's run: no builtOn

    def find_queue_item(self, job: str, parameter: str, value: str,
                        queue: list[QueueItem] | None = None,
                        known: int | None = None, since: float | None = None,
                        agent: str | None = None, whole: bool = False) -> int | None:
        # the simulated builds list every item, left or not, and every run: `known`, `since`
        # and `whole` unused
        with self._lock:
            return next((b.queue_id for b in self.builds
                         if b.job == job and b.parameters.get(parameter) == value), None)

    def cancel_queue_item(self, queue_item: int) -> None:
        with self._lock:
            for build in self.builds:
                if build.queue_id == queue_item and build.state == "queued":
                    build.state = "cancelled"

    def abort_build(self, job: str, number: int) -> None:
        """The build ends ABORTED at the next tick (its COMPLETED notification then)."""
        with self._lock:
            for build in self.builds:
                if build.job == job and build.number == number and build.state == "running":
                    build.result, build.ends_at = "ABORTED", 0.0

    def online_agents(self) -> set[str]:
        """An agent connects when its pod runs (the inbound agent's process started)."""
        with self._lock:
            names = list(self.nodes)
        return {name for name in names
                if (pod := self.cluster.get_pod(name)) is not None
                and pod.phase == PodPhase.RUNNING}

    def agent_activity(self, name: str) -> AgentActivity | None:
        with self._lock:
            if name not in self.nodes:
                return None
            runs = tuple(RunRef(b.job, b.number) for b in self.builds if b.state == "running"
                         and self._node_for(b.parameters.get(AGENT_PARAMETER, "")) == name)
            pod = self.cluster.get_pod(name)
            return AgentActivity(offline=pod is None or pod.phase != PodPhase.RUNNING
                                 or name in self.disabled,
                                 temporarily_offline=name in self.disabled, runs=runs)

    def agents_activity(self) -> dict[str, AgentActivity]:
        with self._lock:
            names = list(self.nodes)
        return {name: activity for name in names
                if (activity := self.agent_activity(name)) is not None}

    def runs_carrying(self, parameter: str, value: str) -> list[RunRef]:
        return []  # the simulated builds run on their agents' executors: none on one-off ones

    def one_off_runs(self, parameter: str) -> dict[str, list[RunRef]]:
        return {}  # as runs_carrying

    def _node_for(self, label: str) -> str | None:
        """The node a build on this label goes to: the one of that name, else one with that
        label (under the lock)."""
        if label in self.nodes:
            return label
        return next((name for name, own in self.labels.items() if own == label), None)

    def disable_agent(self, name: str, reason: str) -> bool:
        with self._lock:
            if name not in self.nodes or name in self.disabled:
                return False
            self.disabled.add(name)
            return True

    def enable_agent(self, name: str) -> bool:
        with self._lock:
            if name not in self.disabled:
                return False
            self.disabled.discard(name)
            return True

    def tick(self, now: float | None = None) -> None:
        """Start queued builds whose agent pod runs; finish builds whose time is up."""
        now = self.clock() if now is None else now
        outbox: list[dict[str, Any]] = []
        with self._lock:
            for build in self.builds:
                agent = self._node_for(build.parameters.get(AGENT_PARAMETER, ""))
                if build.state == "queued" and agent is not None:
                    pod = self.cluster.get_pod(agent)
                    if pod is not None and pod.phase == PodPhase.RUNNING:
                        build.state = "running"
                        build.ends_at = now + self._rng.uniform(*self.build_seconds)
                        outbox += [notification(build, "QUEUED", None),
                                   notification(build, "STARTED", None)]
                elif build.state == "running" and now >= build.ends_at:
                    build.state = "done"
                    self.cluster.finish_pod(agent or build.parameters.get(AGENT_PARAMETER, ""))
                    outbox += [notification(build, "COMPLETED", build.result),
                               notification(build, "FINALIZED", build.result)]
        for body in outbox:
            self.notify(body)

"""What a task runs against: settings, the config file, Redis state, a cluster and a Jenkins.

Built once per process from the environment (real adapters), or installed by the embedded
demo and the simulator (simulated cluster and Jenkins).
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.config.config_file import FileConfig, load_file_config
from workers.config.settings import Settings, load_settings
from workers.core.errors import ConfigError, RetryableError
from workers.core.ports import Cluster, ClusterView, Jenkins


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    config: FileConfig
    state: RedisState
    cluster: Cluster
    jenkins: Jenkins
    view: ClusterView
    capacity: CapacityStore
    close: Callable[[], None] = field(default=lambda: None, compare=False)
    # workers.engine.scale_up's pods (an adapter with list, create and delete), when they are on
    scale_up: Any = None
    # When the process read its config file: the newest file's warm pools win during a
    # rolling upgrade (workers.adapters.warm_specs)
    started_at: float = field(default_factory=time.time, compare=False)


_lock = threading.Lock()
_current: Runtime | None = None


class StartStopped(Exception):
    """The process was asked to stop before its runtime was ready (the cluster snapshot had not
    synced yet): nothing was started, nothing needs finishing."""


def from_environment(settings: Settings | None = None, *,
                     stop: threading.Event | None = None) -> Runtime:
    """Real adapters: Kubernetes from in-cluster config or KUBECONFIG, Jenkins over HTTP. Set
    `stop` to give up waiting for the cluster snapshot (StartStopped)."""
    from workers.adapters.jenkins import JenkinsAdapter
    from workers.adapters.kube import KubeCluster, load_api_client
    from workers.adapters.kube_scale_up import ScaleUpPods
    from workers.adapters.kube_snapshot import ClusterWatch
    from workers.adapters.legacy_pods import LegacyPods
    from workers.adapters.warm_store import WarmStore
    from workers.agent_starts.watch import StartWatch
    from workers.adapters.usage_store import UsageStore
    from workers.job_history.watch import OomWatch, UsageSampler
    from workers.stage_timings.scheduled import ScheduledWatch
    from workers.engine.room_watch import RoomFreedWatch
    from workers.warm.gone_watch import WarmGoneWatch

    settings = settings or load_settings()
    problems = [f"{name}: required" for name, value in (
        ("CI_AUTOSCALER_CONFIG", settings.config_path), ("JENKINS_URL", settings.jenkins_url),
        ("JENKINS_USER", settings.jenkins_user), ("JENKINS_API_TOKEN", settings.jenkins_api_token),
    ) if not value]
    if problems:
        raise ConfigError(problems)
    config = load_file_config(settings.config_path)
    connection = settings.redis_client()
    # Job threads, and as many side threads creating pods (workers.concurrency.side).
    api_client = load_api_client(kubeconfig=settings.kubeconfig,
                                 threads=2 * settings.provision_concurrency)
    state = RedisState(connection, prefix=settings.key_prefix, queue_name=settings.queue_name)
    # Pods are this installation's by their label; those from before labels when its state
    # knows them (workers.core.installation_pods).
    mine = {"installation": settings.installation,
            "legacy_known": LegacyPods(state, WarmStore(connection, prefix=settings.key_prefix))
            if settings.installation else None}
    watch = ClusterWatch(api_client=api_client,
                         metrics_interval_seconds=settings.metrics_interval_seconds,
                         agent_namespace=settings.agent_namespace,
                         installation=settings.installation)
    # Its agent's usage and OOM kills, for sizing the job's next builds (workers.job_history).
    # First of the pod listeners: an OOM kill is recorded before the StartWatch below queues
    # the build's fail, which another worker may run (and release) at once; released first,
    # the build would learn no OOM and retryOnOOM would make no bigger build.
    usage = UsageStore(connection, prefix=settings.key_prefix)
    watch.add_usage_listener(UsageSampler(usage))
    watch.add_pod_listener(OomWatch(store=usage, namespace=settings.agent_namespace,
                                    templates=config.templates, state=state, **mine))
    # An agent pod that cannot start fails its build from the watch event
    # (workers.agent_starts.watch).
    watch.add_pod_listener(StartWatch(state=state, namespace=settings.agent_namespace,
                                      fatal_waiting_reasons=settings.fatal_waiting_reasons,
                                      pull_retry_seconds=settings.image_pull_retry_seconds,
                                      **mine))
    # Its pod bound to a node: the build's stage SCHEDULED (workers.stage_timings.scheduled).
    watch.add_pod_listener(ScheduledWatch(state=state, namespace=settings.agent_namespace,
                                          **mine))
    # An idle warm agent's pod gone (a give-way's, once Terminating ends): the waiting builds
    # re-driven at once, not at the next reconcile pass (workers.warm.gone_watch).
    capacity = CapacityStore(connection, prefix=settings.key_prefix)
    watch.add_pod_listener(WarmGoneWatch(state=state, capacity=capacity,
                                         namespace=settings.agent_namespace, **mine))
    # Any pod gone or ended on a node (a released agent's, once its DELETED comes; someone
    # else's): the same, for every waiting build (workers.engine.room_watch).
    watch.add_pod_listener(RoomFreedWatch(state=state, capacity=capacity))
    watch.start()
    if not watch.wait_synced(settings.snapshot_sync_seconds, stop):
        watch.stop()
        if stop is not None and stop.is_set():
            raise StartStopped("asked to stop before the cluster snapshot synced")
        raise RetryableError("the cluster snapshot did not sync with the API server in "
                             f"{settings.snapshot_sync_seconds:g}s")
    return Runtime(
        settings=settings, config=config,
        state=state,
        cluster=KubeCluster(api_client=api_client, namespace=settings.agent_namespace, **mine),
        jenkins=JenkinsAdapter(url=settings.jenkins_url, user=settings.jenkins_user,
                               token=settings.jenkins_api_token.get_secret_value(),
                               installation=settings.installation),
        view=watch, capacity=capacity,
        close=watch.stop,
        scale_up=ScaleUpPods(api_client=api_client, namespace=settings.agent_namespace, **mine)
        if settings.scale_up_pods else None,
    )


def install(runtime: Runtime | None) -> None:
    """Use this runtime for tasks in this process (the demo, the simulator, tests); None resets."""
    global _current
    with _lock:
        previous, _current = _current, runtime
    if previous is not None and previous is not runtime:
        previous.close()


def current(stop: threading.Event | None = None) -> Runtime:
    """The process's runtime, made from the environment the first time (see from_environment
    for `stop`)."""
    global _current
    with _lock:
        if _current is None:
            _current = from_environment(stop=stop)
        return _current

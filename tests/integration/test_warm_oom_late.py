"""An OOM kill of a build that ran on a claimed warm agent, seen by the worker's pod watch only
after the build's release (the kubelet writes the final status of a pod being deleted after
Jenkins' result released it: pkg/kubelet/status/status_manager.go), is folded late into the
build, as for a build's own pod (workers.job_history.watch). On real parts: redis-server,
kmock over HTTP (the worker's own watch sees the pod), the Jenkins fake, RQ's SimpleWorker.

A warm pod's build-key label is its own name, no build's (workers.warm.agents.own_request):
the watch read "no build released" for it, marked a run nobody would take again, and the
kill was lost: the build read a plain FAILURE, its job's next build was not sized up, and
retryOnOOM started nothing.
"""

from tests.integration.test_build_stages import notify, record
from tests.integration.test_placement_on_cluster import push
from tests.support.app import work
from tests.support.kmock_cluster import terminated
from tests.support.monitoring import wait_until
from workers import runtime
from workers.adapters.usage_store import UsageStore
from workers.core import commit_status
from workers.core.pods import AGENT_CONTAINER
from workers.core.warm_pool import WarmState
from workers.warm import agents, pool

NAMESPACE = "ci-agents"
MIB = 2**20
AGENT_MEMORY = 256 * MIB  # the injected agent's share of the build container (agentMemory)
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: mvn}
templates:
  mvn:
    cpu: {min: 500m, default: "1", max: "2"}
    memory: {min: 512Mi, default: 1Gi, max: 2Gi}
    warm: {min: 1, max: 1, idleSeconds: 600}
"""
WATCH_SECONDS = 15  # the worker's watch sees a pod event well within this


def test_a_late_oom_kill_of_a_build_on_a_warm_agent_is_folded_into_the_build(
        app_on_cluster, kube, jenkins_fake):
    app = app_on_cluster(CONFIG, namespace=NAMESPACE, nodes=(("node-a", "8", "32Gi"),))
    rt = runtime.current()
    pool.run(rt)
    [warm] = [e.name for e in agents.store(rt).agents("mvn")]
    kube.set_pod_phase(NAMESPACE, warm, "Running", node="node-a")
    jenkins_fake.connect_agent(warm)
    pool.notice_online(rt)
    assert [e.state for e in agents.store(rt).agents("mvn")] == [WarmState.IDLE]

    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    assert rec["warm_agent"] == warm and rec["agent"] == warm, rec
    memory = int(rec["memory_bytes"])

    # The build container is OOM-killed; Jenkins ends the run (FAILURE: its agent gone) and
    # the release deletes the pod before the kubelet's status says OOMKilled.
    kube.hold_deletions("node-a")
    run = jenkins_fake.finish_build(jenkins_fake.start_build(int(rec["queue_item"])).queue_id,
                                    "FAILURE")
    assert notify(app, warm, run, "COMPLETED") == 202
    work(app)
    released = record(app, key)
    assert released.get("released_at") and commit_status.OOM_FIELD not in released, released
    kube.kubelet_status(NAMESPACE, warm, phase="Failed",
                        states={AGENT_CONTAINER: terminated("OOMKilled", 137)})
    if kube.pod(NAMESPACE, warm) is not None:
        kube.kubelet_confirms_deletion(NAMESPACE, warm)

    def learned():
        work(app)
        return record(app, key).get(commit_status.OOM_FIELD)
    wait_until(learned, timeout=WATCH_SECONDS, what="the late OOM kill folded into the build")
    usage = UsageStore(rt.state.redis, prefix=rt.settings.key_prefix)
    # the killed container's limit, as the pod's spec had it
    assert int(record(app, key)[commit_status.OOM_FIELD]) == memory + AGENT_MEMORY
    assert usage.history("build", "mvn").oom_kills == 1
    assert not usage.oom_pending(warm)  # nothing left behind

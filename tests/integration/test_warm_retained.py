"""podRetention: onFailure for a build that ran on a claimed warm agent, on real parts
(redis-server, kmock over HTTP, the Jenkins fake, RQ's SimpleWorker, the reconcile pass).

The release keeps the warm pod for debugging and deletes its Jenkins node; when Jenkins fails
that delete through every retry (a 500, or a restart right after the build's COMPLETED), the
node is left to the pass's delete_agentless_nodes, which must delete it though the pod is
kept: left, the kept pod's agent stays (or comes back) online under the warm agent's label,
and a rebuild of the failed build (same parameters, so the same CI_AUTOSCALER_AGENT label)
would run on that debugging pod (tests/integration/test_retention.py, for a build's own pod).
"""

from tests.integration.test_caps import complete
from tests.integration.test_pod_templates import make_world, push, work  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.core.warm_pool import WarmState
from workers.engine import reconcile
from workers.warm import agents, pool

RETAINED_WARM = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    podRetention: onFailure
    podRetentionSeconds: 600
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
    warm: {min: 1, max: 1, idleSeconds: 600}
"""


def test_a_kept_warm_pods_jenkins_node_the_release_could_not_delete_goes_in_the_next_pass(
        make_world, kube, jenkins_fake):
    app = make_world(RETAINED_WARM)
    rt = runtime.current()
    pool.run(rt)
    [warm] = [e.name for e in agents.store(rt).agents("small")]
    kube.set_pod_phase(NAMESPACE, warm, "Running", node="node-a")
    jenkins_fake.connect_agent(warm)
    pool.notice_online(rt)
    assert [e.state for e in agents.store(rt).agents("small")] == [WarmState.IDLE]
    state = app.extensions["ci_autoscaler"].state
    key = push(app.test_client())
    work(app)
    assert state.get_build(key)["warm_agent"] == warm

    complete(app.test_client(), jenkins_fake, warm, status="FAILURE")
    jenkins_fake.fail_next(500, times=4, path_prefix=f"/computer/{warm}/")  # every retry
    work(app)
    build = state.get_build(key)
    assert build["status"] == "retained" and warm in jenkins_fake.nodes
    assert kube.pod(NAMESPACE, warm) is not None  # kept for debugging

    passed = reconcile.reconcile_once(rt, now=float(build["retained_until"]) - 60)

    assert warm not in jenkins_fake.nodes, passed
    assert passed["jenkins_agents_deleted"] == 1
    assert kube.pod(NAMESPACE, warm) is not None  # still kept for debugging

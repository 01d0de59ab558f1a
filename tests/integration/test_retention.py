"""podRetention: onFailure on the real path: the Jenkins fake's build fails, its COMPLETED
notification goes through the web app, the release job keeps the pod in kmock, and a
reconcile pass past the retention time deletes it (driven with an explicit `now`)."""

from tests.integration.test_caps import complete, metric_lines
from tests.integration.test_pod_templates import make_world, push, work  # noqa: F401
from tests.integration.test_push_to_pod import NAMESPACE
from workers import runtime
from workers.core.pods import RETAINED as RETAINED_VALUE, RETAINED_LABEL
from workers.engine import reconcile

RETAINED = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    podRetention: onFailure
    podRetentionSeconds: 600
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


def agent_running(app, kube):
    """One push built to its agent's pod, which kmock shows running on node-a: the build's
    state store, key and agent."""
    state = app.extensions["ci_autoscaler"].state
    key = push(app.test_client())
    work(app)
    agent = state.get_build(key)["agent"]
    kube.set_pod_phase(NAMESPACE, agent, "Running", node="node-a")
    return state, key, agent


def test_a_failed_builds_pod_outlives_the_build_by_the_retention_time_then_is_gone(
        make_world, kube, jenkins_fake):
    app = make_world(RETAINED)
    client = app.test_client()
    state, key, agent = agent_running(app, kube)

    complete(client, jenkins_fake, agent, status="FAILURE")
    work(app)
    build = state.get_build(key)
    assert build["status"] == "retained" and build["result"] == "FAILURE"
    assert kube.pod(NAMESPACE, agent) is not None  # kept for debugging
    # and labelled so: no sample of what builds use (workers.adapters.kube_objects.agent_usage),
    # and found with `kubectl get pods -l ci-autoscaler.io/retained=true`
    assert kube.pod(NAMESPACE, agent)["metadata"]["labels"][RETAINED_LABEL] == RETAINED_VALUE
    assert agent not in jenkins_fake.nodes  # its Jenkins node is gone: nothing lands on it
    assert runtime.current().capacity.slots() == {}  # its build is over: no cap slot held
    assert f'ci_autoscaler_agents{{phase="retained",template="small"}} 1.0' \
        in metric_lines(app)
    until = float(build["retained_until"])
    assert 599 <= until - float(build["finished_at"]) <= 601

    rt = runtime.current()
    assert reconcile.reconcile_once(rt, now=until - 1)["retained_pods_deleted"] == 0
    assert kube.pod(NAMESPACE, agent) is not None  # still there just before the time is up
    assert reconcile.reconcile_once(rt, now=until + 1)["retained_pods_deleted"] == 1
    assert kube.pod(NAMESPACE, agent) is None
    assert state.get_build(key)["status"] == "released"
    text = metric_lines(app)
    assert ('ci_autoscaler_agents_deleted_total{reason="retention_expired",template="small"} '
            '1.0') in text
    assert reconcile.reconcile_once(rt, now=until + 60)["retained_pods_deleted"] == 0


def test_a_pod_kept_unlabelled_is_labelled_by_the_next_reconcile_pass(
        make_world, kube, jenkins_fake):
    """A pod the release before the label kept (an upgrade within podRetentionSeconds), or
    one whose label patch failed when it was kept (logged, the pod kept all the same), had
    no RETAINED_LABEL until its time was over, an hour by default: read all that while as a
    sample of what its template's builds use, each metrics-server scrape a new one. The
    reconcile pass labels the kept pods it lists without it, once."""
    app = make_world(RETAINED)
    client = app.test_client()
    state, key, agent = agent_running(app, kube)
    complete(client, jenkins_fake, agent, status="FAILURE")
    work(app)
    kube.drop_pod_label(NAMESPACE, agent, RETAINED_LABEL)  # as the release before kept it
    assert RETAINED_LABEL not in kube.pod(NAMESPACE, agent)["metadata"]["labels"]

    rt = runtime.current()
    until = float(state.get_build(key)["retained_until"])
    assert reconcile.reconcile_once(rt, now=until - 2)["retained_pods_labelled"] == 1
    assert kube.pod(NAMESPACE, agent)["metadata"]["labels"][RETAINED_LABEL] == RETAINED_VALUE
    assert reconcile.reconcile_once(rt, now=until - 1)["retained_pods_labelled"] == 0
    assert kube.pod(NAMESPACE, agent) is not None  # kept, its time not over


def test_a_successful_builds_pod_is_deleted_at_once_even_with_retention(
        make_world, kube, jenkins_fake):
    app = make_world(RETAINED)
    client = app.test_client()
    key = push(client)
    work(app)
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    complete(client, jenkins_fake, agent, status="SUCCESS")
    work(app)
    assert kube.pod(NAMESPACE, agent) is None
    assert app.extensions["ci_autoscaler"].state.get_build(key)["status"] == "released"


def test_without_retention_a_failed_builds_pod_is_deleted_at_once(
        make_world, kube, jenkins_fake):
    app = make_world(RETAINED.replace("podRetention: onFailure", "podRetention: never"))
    client = app.test_client()
    key = push(client)
    work(app)
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    complete(client, jenkins_fake, agent, status="FAILURE")
    work(app)
    assert kube.pod(NAMESPACE, agent) is None


def test_a_kept_pods_jenkins_node_the_release_could_not_delete_goes_in_the_next_pass(
        make_world, kube, jenkins_fake):
    """The release keeps the pod and deletes the agent's Jenkins node, which Jenkins fails
    through every retry (a 500, or a restart right after the build's COMPLETED): the node is
    left to delete_agentless_nodes, which deletes it though the pod is kept. Left until the
    retention ends, the kept pod's agent stays (or comes back) online, its secret an HMAC of
    its name, and a rebuild of the failed build, same agent label, would run on that pod."""
    app = make_world(RETAINED)
    client = app.test_client()
    state, key, agent = agent_running(app, kube)
    complete(client, jenkins_fake, agent, status="FAILURE")
    jenkins_fake.fail_next(500, times=4, path_prefix=f"/computer/{agent}/")  # every retry
    work(app)
    build = state.get_build(key)
    assert build["status"] == "retained" and agent in jenkins_fake.nodes

    passed = reconcile.reconcile_once(runtime.current(),
                                      now=float(build["retained_until"]) - 60)

    assert passed["jenkins_agents_deleted"] == 1 and agent not in jenkins_fake.nodes
    assert kube.pod(NAMESPACE, agent) is not None  # still kept for debugging


def test_a_failed_builds_pod_no_node_took_is_deleted_not_kept(make_world, kube, jenkins_fake):
    """A build aborted while its pod still waited for a node (a Pipeline's STARTED comes before
    any agent connects): nothing ran there to look at, and kept Pending for the retention
    time its pod would make a cluster autoscaler add a node for it (REALITY.md) and take the
    room freed for a waiting build once kube-scheduler placed it."""
    app = make_world(RETAINED)
    client = app.test_client()
    state = app.extensions["ci_autoscaler"].state
    key = push(client)
    work(app)
    agent = state.get_build(key)["agent"]
    assert not kube.pod(NAMESPACE, agent)["spec"].get("nodeName")  # Pending, no node yet

    complete(client, jenkins_fake, agent, status="ABORTED")
    work(app)

    assert kube.pod(NAMESPACE, agent) is None
    assert state.get_build(key)["status"] == "released"
    assert 'ci_autoscaler_agents{phase="retained",template="small"} 1.0' \
        not in metric_lines(app)

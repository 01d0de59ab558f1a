"""Through the worker's own provision over kmock: a node with a NoExecute taint the template
tolerates only for `tolerationSeconds` gets no build that may run longer than that.

kube-scheduler's TaintToleration filter lets the pod bind there (any toleration of the taint
will do: Kubernetes docs, "Taints and Tolerations"), but the taint eviction controller then
evicts it once those seconds are up: "pods that tolerate the taint with a specified
tolerationSeconds remain bound for the specified amount of time" (same page, NoExecute), the
seconds of the first toleration in the pod's list that tolerates the taint
(pkg/controller/tainteviction: GetMatchingTolerations, getMinTolerationTime). A build is
bounded by its activeDeadlineSeconds only: spread by load, every build went to the idle
tainted node and was evicted mid-run."""

import pytest

from tests.integration.test_placement_on_cluster import node_of, push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import state_of
from tests.integration.test_scale_up_pods import scale_up_pods
from tests.support.app import one_template_config, production_env, work
from service.app import create_app
from workers import runtime
from workers.engine import reconcile

TAINT = {"key": "ci.example.com/draining", "value": "true", "effect": "NoExecute"}


def config(seconds: int, deadline: int = 3600) -> str:
    return one_template_config(f"""
        cpu: {{min: 900m, default: 900m, max: 900m}}
        memory: {{min: 768Mi, default: 768Mi, max: 768Mi}}
        activeDeadlineSeconds: {deadline}
        tolerations:
          - {{key: ci.example.com/draining, operator: Exists, effect: NoExecute,
              tolerationSeconds: {seconds}}}
    """)


def start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=path, namespace=NAMESPACE,
                   CI_AUTOSCALER_METRICS_INTERVAL_SECONDS="0.2",
                   CI_AUTOSCALER_PLACEMENT_CANDIDATES="3")
    # the tainted node is the idlest: spread by load alone picks it first
    for name, used, taints in (("a-draining", "0", [TAINT]), ("b-busy", "1.6", [])):
        kube.add_node(name, cpu="4", memory="16Gi", taints=taints)
        kube.set_node_usage(name, cpu=used, memory="1Gi")
    runtime.install(None)
    return create_app()


def candidates(kube, app, key) -> set[str]:
    """The hostnames of the agent pod's required node affinity: where kube-scheduler may
    bind it."""
    agent = app.extensions["ci_autoscaler"].state.get_build(key)["agent"]
    affinity = kube.pod(NAMESPACE, agent)["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return {v for term in terms for e in term["matchExpressions"]
            if e["key"] == "kubernetes.io/hostname" for v in e["values"]}


@pytest.fixture
def cleanup():
    yield
    runtime.install(None)


def test_a_node_that_evicts_the_build_before_its_deadline_is_not_a_candidate(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, cleanup):
    app = start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config(600))
    key = push(app.test_client(), 0)
    work(app)
    assert node_of(app, key) == "b-busy"
    # nor among the candidates kube-scheduler may bind it to
    assert candidates(kube, app, key) == {"b-busy"}


def test_a_build_its_deadline_ends_before_the_eviction_may_go_there(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, cleanup):
    app = start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake,
                config(3600, deadline=1800))
    key = push(app.test_client(), 0)
    work(app)
    assert node_of(app, key) == "a-draining"
    assert candidates(kube, app, key) == {"a-draining", "b-busy"}


def test_a_scale_up_pod_is_made_for_a_build_only_such_nodes_would_take(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, cleanup):
    """Every node of the pool is being drained (the NoExecute taint); the build matches none it
    may run its deadline on. Its pause pod tolerating the taint as the template does was
    bound on a draining node (in vain: none made, no node added, the build waiting until
    the old nodes were gone); without that toleration it stays Pending, and a node autoscaler
    adds a node."""
    app = start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config(600))
    kube.patch_node("b-busy", {"spec": {"taints": [TAINT]}})
    key = push(app.test_client(), 0)
    work(app)
    rt = runtime.current()
    assert state_of(app).get_build(key)["wait_reason"] == "no_matching_node"
    assert reconcile.reconcile_once(rt)["scale_up_pods_created"] == 1
    [pod] = scale_up_pods(kube).values()
    assert TAINT["key"] not in str(pod["spec"].get("tolerations"))


def test_a_warm_agent_goes_only_where_a_build_claiming_it_late_still_runs_its_deadline(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, cleanup):
    """A warm pod lives up to its idle life and then its build's deadline
    (activeDeadlineSeconds: warm.agents.deadline_seconds); its eviction counts from its
    binding (the taint eviction controller, from when it sees the pod on the tainted node).
    Judged on the build's deadline alone (1800 s, tolerated 2400 s), the idle tainted node
    took it, and a build claiming it after 20 idle minutes was evicted 10 minutes in."""
    from workers.core.warm_pool import WARM_MAX_AGE_SECONDS
    from workers.warm import agents
    assert 2400 < 1800 + WARM_MAX_AGE_SECONDS
    text = config(2400, deadline=1800) + "    warm: {min: 1, max: 1, idleSeconds: 600}\n"
    start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, text)
    rt = runtime.current()
    started = agents.start(rt, "small", rt.config.templates["small"])
    assert started.node == "b-busy"
    pod = kube.pod(NAMESPACE, started.name)
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {v for t in terms for e in t["matchExpressions"] for v in e["values"]} == {"b-busy"}

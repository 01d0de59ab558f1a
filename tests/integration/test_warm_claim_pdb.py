"""A drain and warm agents (agents.podDisruptionBudget, workers.warm.protect), on real parts:
redis-server, kmock over HTTP (the worker's own PATCH of the pod's labels), the Jenkins fake,
and the budget as the chart renders it (Helm's SDK) for the installation the worker runs as.

- an idle warm agent's pod is not selected by the budget: it would hold a drain for ever;
- once a build claims the agent, its pod is, like any build's agent pod: a drain waits for
  the build instead of evicting it;
- a claim whose relabel fails still runs the build on the agent.
"""

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker

from tests.integration.test_helm_agent_pdb import _engine_env, _objs, _selects, _values
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import CONFIG, pool_of, record, warm_up
from tests.support.app import production_env, work
from tests.support.helm_chart import one
from service.app import create_app
from workers import runtime
from workers.adapters.redis_state import SERIALIZER
from workers.core.warm_pool import WarmState
from workers.engine.intake import Mover
from workers.warm import agents


@pytest.fixture(scope="module")
def chart() -> list[dict[str, Any]]:
    """The chart with the agents' budget on; its agent namespace is the tests' (ci-agents)."""
    return _objs(_values())


@pytest.fixture
def app(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, chart):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE)
    # the worker runs as the release the chart rendered: its pods carry that installation
    monkeypatch.setenv("CI_AUTOSCALER_INSTALLATION",
                       _engine_env(chart)["CI_AUTOSCALER_INSTALLATION"])
    runtime.install(None)
    yield create_app()
    runtime.install(None)


def claim(app) -> str:
    """A push's provision (only it: the replacement is queued after it). Its build key."""
    key = push(app.test_client(), 0)
    state = app.extensions["ci_autoscaler"].state
    Mover(state).drain()
    SimpleWorker([state.queue], connection=state.redis,
                 serializer=SERIALIZER).work(burst=True, max_jobs=1)
    return key


def test_a_claimed_warm_agent_s_pod_is_held_by_the_budget_and_an_idle_one_is_not(
        app, kube, jenkins_fake, chart):
    pdb = one(chart, "PodDisruptionBudget", "agents")
    assert pdb["metadata"]["namespace"] == NAMESPACE
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    assert not _selects(pdb, kube.pod(NAMESPACE, warm))  # idle: a drain may take it

    key = claim(app)
    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["warm_agent"] == warm
    pod = kube.pod(NAMESPACE, warm)
    assert pod["metadata"]["labels"][agents.WARM_LABEL] == "claimed"
    assert _selects(pdb, pod)  # its build is held like any build's
    patches = [r for r in kube.requests()
               if r.startswith(f"PATCH /api/v1/namespaces/{NAMESPACE}/pods/{warm}")]
    assert len(patches) == 1
    assert unprotected(app) == 0

    # The replacement the claim queued is idle warm again: not selected.
    work(app)
    fresh = [e.name for e in pool_of(rt) if e.name != warm]
    assert fresh and all(not _selects(pdb, kube.pod(NAMESPACE, n)) for n in fresh)
    # The repairs still take the claimed pod for a warm agent: its longer deadline holds.
    assert {e.name: e.state for e in pool_of(rt)}[warm] == WarmState.CLAIMED


def test_a_claim_whose_relabel_fails_still_runs_the_build_on_the_agent(
        app, kube, jenkins_fake, chart, caplog):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    [warm] = warm_up(rt, kube, jenkins_fake, "node-a")
    # RBAC without `patch` on pods (a Role of before this change): the API server's 403.
    # (kmock applies the patch before it answers with the injected error, so the label is
    # not looked at here: the claim is.)
    kube.fail("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{warm}", status=403,
              reason="Forbidden", message=f'pods "{warm}" is forbidden: User '
              '"system:serviceaccount:ci:cia-ci-autoscaler" cannot patch resource "pods" in '
              f'API group "" in the namespace "{NAMESPACE}"')

    key = claim(app)
    rec = record(app, key)
    assert rec["status"] == "triggered" and rec["warm_agent"] == warm
    assert [e.state for e in pool_of(rt) if e.name == warm] == [WarmState.CLAIMED]
    assert "claimed warm agent's pod not labelled claimed" in caplog.text
    assert unprotected(app) == 1


def unprotected(app) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "ci_autoscaler_warm_unprotected")
    return sum(s.value for s in family.samples
               if s.name.endswith("_total") and s.labels["template"] == "small")

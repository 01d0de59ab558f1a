"""A warm pool whose agents cannot start backs off (README, "Warm agents"): a template whose
image is broken, with `warm.min` above 0, made a pod, retired it (warm_not_started) and made
the next on every pass, for as long as the image stayed broken: a pod create, a Jenkins node
and a registry pull every 15 s. After a start failure the pool starts no agent of that
template for WARM_BACKOFF_SECONDS, doubled at each failure in a row up to
WARM_BACKOFF_MAX_SECONDS (as a kubelet backs off an image pull or a crashing container); an
agent that comes online, or another pod spec of the template (the image fixed), ends it.

Through the reconcile pass's warm pool on kmock, with the Jenkins fake."""

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (  # noqa: F401 (the fixture)
    CONFIG, app, pool_of, reconfigured)
from tests.support.kmock_cluster import waiting
from workers import runtime
from workers.core.warm_pool import WARM_MAX_AGE_SECONDS, WarmState
from workers.warm import pool
from workers.warm.backoff import WARM_BACKOFF_MAX_SECONDS, WARM_BACKOFF_SECONDS


def broken(kube, name: str) -> None:
    """The kubelet cannot pull the pod's image: every container waits InvalidImageName."""
    names = [c["name"] for c in kube.pod(NAMESPACE, name)["spec"]["containers"]]
    kube.kubelet_status(NAMESPACE, name, phase="Pending", node="node-a",
                        states={n: waiting("InvalidImageName", "bad image") for n in names})


def starting(rt) -> list[str]:
    return [e.name for e in pool_of(rt) if e.state == WarmState.STARTING]


def fails_at(rt, kube, now: float) -> None:
    """A pass at `now` retires the pool's starting agent, which cannot start."""
    [name] = starting(rt)
    broken(kube, name)
    pool.run(rt, now=now)
    assert name not in {e.name for e in pool_of(rt)}


def test_a_pool_whose_agents_cannot_start_backs_off_doubling_up_to_a_cap(
        app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    assert pool.run(rt)["warm_started"] == 1
    t = pool_of(rt)[0].created
    wait = WARM_BACKOFF_SECONDS
    while wait <= WARM_BACKOFF_MAX_SECONDS:
        t += 1
        fails_at(rt, kube, t)
        assert starting(rt) == []  # the failing pass starts none
        assert pool.run(rt, now=t + wait - 1)["warm_started"] == 0
        assert pool.run(rt, now=t + wait + 1)["warm_started"] == 1
        t += wait + 1
        wait *= 2
    t += 1
    fails_at(rt, kube, t)  # at the cap: no longer doubled
    assert pool.run(rt, now=t + WARM_BACKOFF_MAX_SECONDS - 1)["warm_started"] == 0
    assert pool.run(rt, now=t + WARM_BACKOFF_MAX_SECONDS + 1)["warm_started"] == 1

    # an agent that comes online ends it: the next failure waits the first step again
    [name] = starting(rt)
    kube.set_pod_phase(NAMESPACE, name, "Running", node="node-a")
    jenkins_fake.connect_agent(name)
    pool.notice_online(rt)
    assert [e.state for e in pool_of(rt)] == [WarmState.IDLE]
    # idle past its age, it is made again: the failure of that one waits the first step
    t = pool_of(rt)[0].created + WARM_MAX_AGE_SECONDS + 1
    assert pool.run(rt, now=t)["warm_started"] == 1
    fails_at(rt, kube, t + 1)
    assert pool.run(rt, now=t + 1 + WARM_BACKOFF_SECONDS + 1)["warm_started"] == 1


def test_a_fixed_image_ends_the_backoff_at_once(app, kube, jenkins_fake, monkeypatch,
                                                tmp_path):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    rt = runtime.current()
    assert pool.run(rt)["warm_started"] == 1
    t = pool_of(rt)[0].created + 1
    fails_at(rt, kube, t)
    assert pool.run(rt, now=t + 1)["warm_started"] == 0
    reconfigured(monkeypatch, tmp_path, CONFIG.replace(
        "  small:\n", "  small:\n    image: maven:3.9-eclipse-temurin-21\n"))
    assert pool.run(runtime.current(), now=t + 2)["warm_started"] == 1

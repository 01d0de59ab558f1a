"""Two installations sharing one agent namespace (two releases in one namespace without
agents.namespace, or both pointed at ci-agents), on real parts: one kmock cluster, one Jenkins
fake, one redis-server with a key prefix and a queue for each. Each one's pods carry its
installation label; its reconcile passes (orphan repairs, warm pool, scale-up pods) and its
pod watch leave the other's pods alone and still clean up its own. Pods from before
installation labels are its own only when its build state knows them
(workers.core.installation_pods)."""

import time

import kubernetes
import pytest

from service.app import create_app
from tests.integration.test_installations import Installation
from tests.integration.test_reruns import push
from tests.support.app import production_env, work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters.kube import KubeCluster
from workers.adapters.kube_scale_up import ScaleUpPods
from workers.adapters.redis_state import BuildStatus
from workers.config.settings import load_settings
from workers.core import scale_up
from workers.core.cluster import Resources
from workers.core.installation_pods import INSTALLATION_ANNOTATION, INSTALLATION_LABEL
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import (
    BUILD_KEY_LABEL, MANAGED_BY_LABEL, WARM_LABEL, agent_pod_manifest, agent_secret_manifest)
from workers.core.scale_up import SCALE_UP_VALUE
from workers.core.sizing import template_default

NS = "ci-agents"
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""
WARM = CONFIG + "    warm: {min: 1, max: 1, idleSeconds: 600}\n"


def shared(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config: str = CONFIG,
           **env: str) -> list[Installation]:
    """staging and prod, both with agent namespace ci-agents."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=path, namespace=NS, **env)
    made = []
    for name in ("staging", "prod"):
        settings = load_settings(installation=f"{name}/ci-autoscaler",
                                 key_prefix=f"{name}:", queue_name=name)
        made.append(Installation(name, create_app(settings), runtime.from_environment(settings)))
    return made


@pytest.fixture
def closing():
    made: list[Installation] = []
    yield made
    for installation in made:
        installation.rt.close()


@pytest.fixture
def installations(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, closing):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    closing.extend(shared(monkeypatch, tmp_path, redis_url, kube, jenkins_fake))
    return closing


@pytest.fixture
def work_as(monkeypatch):
    def run(installation: Installation) -> None:
        monkeypatch.setattr(runtime, "_current", installation.rt)
        work(installation.app)
    return run


def by_installation(kube) -> dict[str, list[str]]:
    """Pod names by their installation label ("" for none)."""
    out: dict[str, list[str]] = {}
    for pod in kube.pods(NS):
        labels = pod["metadata"].get("labels") or {}
        out.setdefault(labels.get(INSTALLATION_LABEL, ""), []).append(pod["metadata"]["name"])
    return {k: sorted(v) for k, v in out.items()}


def pod_of(template: str, name: str, key: str, installation: str = "") -> dict:
    build = BuildRequest(build_key=key, agent_name=name, source="gitlab", project="g/p",
                         ref="refs/heads/main", sha="0" * 40, user="u", job="build",
                         template=template)
    return agent_pod_manifest(build=build, template=PodTemplate(), namespace=NS,
                              size=template_default(PodTemplate()),
                              jenkins_url="http://jenkins.invalid/", installation=installation)


def test_each_installations_pods_carry_its_label_and_identity(installations, kube, work_as):
    for installation in installations:  # the same push to both: the same build key
        assert push(installation.app.test_client(), "delivery-1").status_code == 202
        work_as(installation)

    pods = {p["metadata"]["name"]: p["metadata"] for p in kube.pods(NS)}
    assert len(pods) == 2
    assert sorted((m["labels"][INSTALLATION_LABEL], m["annotations"][INSTALLATION_ANNOTATION])
                  for m in pods.values()) == [("prod.ci-autoscaler", "prod/ci-autoscaler"),
                                              ("staging.ci-autoscaler", "staging/ci-autoscaler")]
    assert len({m["labels"][BUILD_KEY_LABEL] for m in pods.values()}) == 1
    for installation in installations:
        (mine,) = installation.rt.cluster.list_pods()
        assert mine.labels[INSTALLATION_LABEL] == f"{installation.name}.ci-autoscaler"


def test_orphan_repairs_leave_the_others_pods_alone_and_delete_their_own(
        installations, kube, jenkins_fake, work_as):
    staging, prod = installations
    assert push(prod.app.test_client(), "delivery-1").status_code == 202
    work_as(prod)
    (prods,) = by_installation(kube)["prod.ci-autoscaler"]
    # An orphan of staging's own: its label, no build staging knows.
    staging.rt.cluster.create_pod(pod_of("small", "cia-build-00000000000f", "f" * 20,
                                         "staging/ci-autoscaler"))

    result = reconcile.reconcile_once(staging.rt)

    assert result["pods_deleted"] == 1
    assert by_installation(kube) == {"prod.ci-autoscaler": [prods]}
    assert reconcile.reconcile_once(prod.rt)["pods_deleted"] == 0
    assert by_installation(kube) == {"prod.ci-autoscaler": [prods]}
    assert list(jenkins_fake.nodes) == [prods]


def test_a_pod_of_another_that_cannot_start_never_fails_this_ones_build_of_the_same_key(
        installations, kube, work_as):
    """The same push to both: one build key on two pods. Prod's image cannot be pulled;
    staging's watch and its reconcile sweep leave staging's build be."""
    keys = {}
    for installation in installations:
        keys[installation.name] = push(installation.app.test_client(),
                                       "delivery-1").json["build_key"]
        work_as(installation)
    staging, prod = installations
    (prods,) = by_installation(kube)["prod.ci-autoscaler"]

    kube.image_pull_backoff(NS, prods)
    # A later event in the same watch stream: once staging's watch has it, it had prod's.
    kube.create_pod("elsewhere", "marker", node="node-a")

    wait_until(lambda: staging.rt.view.pods_on("node-a") and prod.state.queue.count,
               timeout=10, what="both watches saw the events; prod's failure queued")
    reconcile.reconcile_once(staging.rt)
    assert not staging.state.get_build(keys["staging"]).get("fail_reason")
    assert staging.state.queue.count == 0
    assert staging.state.get_build(keys["staging"])["status"] == BuildStatus.TRIGGERED
    reconcile.reconcile_once(prod.rt)
    assert prod.state.get_build(keys["prod"])["status"] == BuildStatus.FAILED


def test_each_warm_pool_keeps_its_own_agents(monkeypatch, tmp_path, redis_url, kube,
                                             jenkins_fake, closing):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    closing.extend(shared(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, WARM))
    staging, prod = closing

    for _ in range(2):
        for installation in closing:
            result = reconcile.reconcile_once(installation.rt)
            assert result["pods_deleted"] == 0, installation.name

    pods = by_installation(kube)
    assert sorted(pods) == ["prod.ci-autoscaler", "staging.ci-autoscaler"]
    assert all(len(names) == 1 for names in pods.values())  # min 1 each, not 1 between them
    assert all((p["metadata"]["labels"]).get(WARM_LABEL) for p in kube.pods(NS))
    # A warm pod of staging's own its store does not know: an orphan, deleted; prod's stays.
    orphan = pod_of("small", "cia-warm-small-00000000000f", "cia-warm-small-00000000000f",
                    "staging/ci-autoscaler")
    orphan["metadata"]["labels"][WARM_LABEL] = "true"
    staging.rt.cluster.create_pod(orphan)
    assert reconcile.reconcile_once(staging.rt)["pods_deleted"] == 1
    assert by_installation(kube) == pods


def scale_up_pods(kube) -> dict[str, str]:
    """name -> installation label of the scale-up pods."""
    return {p["metadata"]["name"]: p["metadata"]["labels"].get(INSTALLATION_LABEL, "")
            for p in kube.pods(NS)
            if p["metadata"]["labels"].get(MANAGED_BY_LABEL) == SCALE_UP_VALUE}


def test_each_gets_its_own_scale_up_pod_for_the_same_waiting_build_and_deletes_only_its_own(
        monkeypatch, tmp_path, redis_url, kube, jenkins_fake, closing, work_as):
    kube.add_node("node-a", cpu="500m", memory="32Gi")  # room for no build
    closing.extend(shared(monkeypatch, tmp_path, redis_url, kube, jenkins_fake))
    staging, prod = closing
    keys = {}
    for installation in closing:  # the same push: the same build key waits in both
        keys[installation.name] = push(installation.app.test_client(),
                                       "delivery-1").json["build_key"]
        work_as(installation)
    assert keys["staging"] == keys["prod"]

    made = {i.name: reconcile.reconcile_once(i.rt)["scale_up_pods_created"] for i in closing}

    assert made == {"staging": 1, "prod": 1}
    assert sorted(scale_up_pods(kube).values()) == ["prod.ci-autoscaler",
                                                    "staging.ci-autoscaler"]
    # Staging's build no longer waits: staging's pass deletes its own pod, and only that.
    staging.state.update_build(keys["staging"], status=BuildStatus.FAILED, wait_reason="")
    staging.rt.capacity.release(keys["staging"])
    reconcile.reconcile_once(staging.rt)
    assert list(scale_up_pods(kube).values()) == ["prod.ci-autoscaler"]
    assert reconcile.reconcile_once(prod.rt)["scale_up_pods_created"] == 0
    assert list(scale_up_pods(kube).values()) == ["prod.ci-autoscaler"]


def test_after_its_upgrade_an_installation_keeps_and_repairs_its_pods_of_before_only(
        installations, kube, jenkins_fake):
    staging, prod = installations
    # a version before
    before = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS)
    running, finished, theirs = ("cia-build-0123456789ab", "cia-build-0123456789ac",
                                 "cia-build-ba9876543210")
    for name, key in ((running, "a" * 20), (finished, "b" * 20), (theirs, "c" * 20)):
        before.create_pod(pod_of("small", name, key))
        kube.set_pod_phase(NS, name, "Running", node="node-a")
    now = time.time()
    staging.state.add_build("a" * 20, {"status": BuildStatus.RUNNING, "agent": running,
                                       "job": "build", "template": "small",
                                       "received_at": now, "agent_online_at": now})
    staging.state.add_build("b" * 20, {"status": BuildStatus.RELEASED, "agent": finished,
                                       "job": "build", "template": "small",
                                       "received_at": now})

    assert sorted(p.name for p in staging.rt.cluster.list_pods()) == sorted([finished, running])
    assert prod.rt.cluster.list_pods() == []  # prod's state knows none of them
    result = reconcile.reconcile_once(staging.rt)

    assert result["pods_deleted"] == 1  # its finished build's pod, repaired as its own
    assert by_installation(kube) == {"": sorted([running, theirs])}
    assert reconcile.reconcile_once(prod.rt)["pods_deleted"] == 0
    assert by_installation(kube) == {"": sorted([running, theirs])}
    assert staging.rt.cluster.delete_pod(theirs) is False  # not one its state knows
    assert staging.rt.cluster.get_pod(running) is not None
    assert staging.rt.cluster.delete_pod(running) is True


def test_without_an_identity_the_labelled_pods_are_anothers(installations, kube, work_as):
    """An installation with no identity (a version before, or one left without) beside one
    with: its lists, repairs and deletes never touch the labelled pods."""
    _staging, prod = installations
    assert push(prod.app.test_client(), "delivery-1").status_code == 202
    work_as(prod)
    (prods,) = by_installation(kube)["prod.ci-autoscaler"]
    plain = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS)

    assert plain.list_pods() == [] and plain.get_pod(prods) is None
    assert plain.delete_pod(prods) is False
    assert by_installation(kube) == {"prod.ci-autoscaler": [prods]}
    # nor its agent's Secret, which carries the installation too
    assert list(kube.secrets(NS)) == [f"{prods}-secret"]
    assert _staging.rt.cluster.delete_pod(prods) is False
    assert list(kube.secrets(NS)) == [f"{prods}-secret"]


def test_the_others_pods_still_count_on_their_node(installations, kube):
    """Placement counts every pod's requests on a node: another installation's are real
    load. Its pod of the same build key is never taken for this one's (a reservation's)."""
    staging, prod = installations
    key = "d" * 20
    theirs = pod_of("small", "cia-build-0000000000dd", key, "prod/ci-autoscaler")
    theirs["spec"]["nodeName"] = "node-a"
    prod.rt.cluster.create_pod(theirs)
    kube.set_pod_phase(NS, "cia-build-0000000000dd", "Running", node="node-a")

    def requested(**kw) -> int:
        (node,) = staging.rt.view.snapshot(**kw)
        return node.requested.cpu_millis

    wait_until(lambda: requested() > 0, timeout=10, what="staging's watch saw prod's pod")
    # A reservation of staging's for that key leaves prod's pod counted.
    assert requested(exclude_build_keys=frozenset({key})) == requested()
    (node,) = prod.rt.view.snapshot(exclude_build_keys=frozenset({key}))
    assert node.requested.cpu_millis == 0  # prod's own: its reservation stands for it


def test_pods_of_before_are_listed_until_an_hour_passed_without_one(installations, kube):
    staging, _prod = installations
    now = [0.0]
    cluster = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS,
                          installation="staging/ci-autoscaler",
                          legacy_known=lambda pods: set(pods), clock=lambda: now[0])
    before = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS)

    def lists() -> int:
        n = len(kube.requests())
        pods = cluster.list_pods()
        assert all(r.startswith("GET") for r in kube.requests()[n:])
        return len(kube.requests()) - n, len(pods)

    before.create_pod(pod_of("small", "cia-build-0123456789ab", "a" * 20))
    assert lists() == (2, 1)
    before.delete_pod("cia-build-0123456789ab")
    assert lists() == (2, 0)  # none found since now
    now[0] = 3599.0
    assert lists() == (2, 0)
    now[0] = 3600.0
    assert lists() == (2, 0)  # an hour without one: no more
    assert lists() == (1, 0)


def test_anothers_unlabelled_pods_do_not_keep_the_second_list_going(installations, kube):
    """Pods without the label that this installation's state does not know are another's
    (one without an identity beside it, making such pods for good; or one of before, its pod
    retained): they never end the hour without pods of before, and every list stayed two
    requests (and a look-up of each in Redis) for ever."""
    now = [0.0]
    cluster = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS,
                          installation="staging/ci-autoscaler",
                          legacy_known=lambda pods: set(), clock=lambda: now[0])
    plain = KubeCluster(api_client=kube.api_client(service_account=NS), namespace=NS)  # no identity
    plain.create_pod(pod_of("small", "cia-build-0123456789ab", "a" * 20))

    def lists() -> int:
        n = len(kube.requests())
        assert cluster.list_pods() == []
        return len(kube.requests()) - n

    assert lists() == 2
    now[0] = 3600.0
    assert lists() == 2  # an hour without one of its own: no more
    assert lists() == 1
    assert kube.pod(NS, "cia-build-0123456789ab") is not None


def test_scale_up_pods_of_before_are_deleted_only_for_builds_this_one_knows(
        installations, kube):
    staging, prod = installations
    # a version before
    before = ScaleUpPods(api_client=kube.api_client(service_account=NS), namespace=NS)
    for key in ("a" * 20, "c" * 20):
        assert before.create(scale_up.manifest(
            build_key=key, template_name="small", template=PodTemplate(),
            requests=[Resources(1000, 2**30)]))
    staging.state.add_build("a" * 20, {"status": BuildStatus.FAILED, "job": "build",
                                       "agent": "cia-build-0123456789ab",
                                       "template": "small", "received_at": time.time()})

    assert [e.build_key for e in staging.rt.scale_up.list()] == ["a" * 20]
    assert prod.rt.scale_up.list() == []
    reconcile.reconcile_once(staging.rt)  # its build waits no more: its pod goes
    reconcile.reconcile_once(prod.rt)
    assert list(scale_up_pods(kube)) == [scale_up.pod_name("c" * 20)]
    assert staging.rt.scale_up.delete(scale_up.pod_name("c" * 20)) is False


def test_an_agents_secret_of_before_taken_over_by_a_retried_provision_stays_its_own(
        installations, kube):
    """A provision begun before the upgrade (its Secret made, its pod not yet: the create's
    answer lost, say) and retried after it finds the Secret without the installation: known
    to its state, it is replaced and stamped as this installation's, label and annotation,
    so that the pod's delete deletes it (a label without the annotation is another's)."""
    staging, _prod = installations
    name, key = "cia-build-0123456789ab", "a" * 20
    request = BuildRequest(build_key=key, agent_name=name, source="gitlab", project="g/p",
                           ref="refs/heads/main", sha="0" * 40, user="u", job="build",
                           template="small")
    kubernetes.client.CoreV1Api(kube.api_client()).create_namespaced_secret(
        NS, agent_secret_manifest(build=request, namespace=NS, secret="s"))  # a version before
    staging.state.add_build(key, {"status": BuildStatus.QUEUED, "agent": name, "job": "build",
                                  "template": "small", "received_at": time.time()})

    identity = "staging/ci-autoscaler"
    assert staging.rt.cluster.create_pod(
        pod_of("small", name, key, installation=identity),
        secret=agent_secret_manifest(build=request, namespace=NS, secret="s",
                                     installation=identity)) is True
    meta = kube.secrets(NS)[f"{name}-secret"]["metadata"]
    assert meta["labels"][INSTALLATION_LABEL] == "staging.ci-autoscaler"
    assert meta["annotations"][INSTALLATION_ANNOTATION] == identity
    assert staging.rt.cluster.delete_pod(name) is True
    assert kube.secrets(NS) == {}

"""Builds always win (issue 22: "a full cluster: a waiting build makes a warm agent give way,
and then gets placed") for what a warm agent's pod holds beside cpu and memory, through the
real parts: a real redis-server, kmock over HTTP (the worker's own watch), the Jenkins fake.

A build of a one-per-node template (a required podAntiAffinity on its own template label,
kubernetes.io/hostname: core.pod_anti_affinity) waits as `pod_anti_affinity` while an idle
warm agent of that template holds the node's token; a GPU build waits as
`insufficient_nvidia.com/gpu` while an idle GPU warm agent holds the node's only GPU. Giving
way reacted to `insufficient_cpu` and `insufficient_memory` only: such a build waited
forever (or for a node added) beside the idle agent whose going would place it. An agent
whose going would not place the build (the GPU it needs is another pod's) stays.
"""

from tests.integration import test_warm_agents
from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (
    MI, ROOMY, WATCH_SECONDS, hinted_push, pod_names, pool_of, reconfigured, record, warm_up_at)
from tests.support.app import GITLAB_TOKEN, work
from tests.support.monitoring import wait_until
from tests.support.payloads import fixture
from workers import runtime
from workers.core.cluster import Resources
from workers.core.warm_pool import WarmState
from workers.engine import redrive
from workers.warm import agents, giving_way, pool

app = test_warm_agents.app  # the fixture: the web app and the worker's environment

GPU = "nvidia.com/gpu"
# One per node: kube-scheduler's InterPodAffinity filter refuses a node holding a pod the
# term selects (Kubernetes docs, "Inter-pod affinity and anti-affinity").
ONE_PER_NODE = ROOMY.replace("    warm:", """    podSpecPatch:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {ci-autoscaler.io/template: small}}
              topologyKey: kubernetes.io/hostname
    warm:""")
# A GPU each: kube-scheduler's NodeResourcesFit counts extended resources per node
# (allocatable, as the device plugin advertises it).
ONE_GPU_EACH = ROOMY.replace("    warm:", f"    resources: {{{GPU}: 1}}\n    warm:")
# A GPU template beside the warm CPU one: GPU pushes (refs/heads/gpu-*) go to it.
GPU_BESIDE_WARM = ROOMY.replace("routes:\n", """routes:
  - {project: "*", ref: "refs/heads/gpu-*", job: build, template: gpu}
""").replace("templates:\n", f"""templates:
  gpu:
    cpu: {{min: 900m, default: 900m, max: 900m}}
    memory: {{min: 768Mi, default: 768Mi, max: 768Mi}}
    resources: {{{GPU}: 1}}
""")
assert ONE_PER_NODE != ROOMY and ONE_GPU_EACH != ROOMY and "template: gpu" in GPU_BESIDE_WARM


def placed(app, rt, key: str) -> bool:
    """The build triggered; the reconcile loop's re-drive until the watch has seen the
    agent's pod go (its DELETED re-drives too: workers.warm.gone_watch)."""
    if record(app, key)["status"] != "triggered":
        redrive.redrive(rt)
        work(app)
    return record(app, key)["status"] == "triggered"


def idle_names(rt) -> list[str]:
    return [e.name for e in pool_of(rt) if e.state == WarmState.IDLE]


def test_a_build_kept_off_by_an_idle_agents_anti_affinity_makes_it_give_way(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ONE_PER_NODE)
    kube.add_node("node-a", cpu="8", memory="32Gi")  # room for many, one per node
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "node-a", 768 * MI)
    # A build the agent is too small for: its own pod, kept off node-a by the agent's token.
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)  # the provision, the give-way its wait queues, the re-drive that queues
    assert record(app, key)["first_wait_reason"] == "pod_anti_affinity", record(app, key)
    assert warm not in idle_names(rt) and warm not in jenkins_fake.nodes
    wait_until(lambda: placed(app, rt, key), timeout=WATCH_SECONDS,
               what="the waiting build placed")
    rec = record(app, key)
    assert rec["node"] == "node-a" and rec["agent"] in pod_names(kube), rec


def test_a_gpu_build_makes_an_idle_gpu_agent_give_way(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    app = reconfigured(monkeypatch, tmp_path, ONE_GPU_EACH)
    kube.add_node("gpu-a", cpu="8", memory="32Gi", extended={GPU: "1"})
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "gpu-a", 768 * MI)
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)
    assert record(app, key)["first_wait_reason"] == f"insufficient_{GPU}", record(app, key)
    assert warm not in idle_names(rt) and warm not in jenkins_fake.nodes
    wait_until(lambda: placed(app, rt, key), timeout=WATCH_SECONDS,
               what="the waiting build placed")
    rec = record(app, key)
    assert rec["node"] == "gpu-a" and rec["agent"] in pod_names(kube), rec


def test_an_idle_agent_whose_going_would_not_place_the_build_stays(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """A GPU build waits on a node whose only GPU another team's pod holds, its memory
    tight too; an idle warm agent of a CPU template there holds the memory it lacks but no
    GPU: giving it up would not place the build. It stays, and the build waits (for a node
    added)."""
    app = reconfigured(monkeypatch, tmp_path, GPU_BESIDE_WARM)
    kube.add_node("gpu-a", cpu="8", memory="4Gi", extended={GPU: "1"})
    rt = runtime.current()
    [warm] = warm_up_at(rt, kube, jenkins_fake, "gpu-a", 768 * MI)
    kube.create_pod("team-b", "someone-elses-training", node="gpu-a",
                    requests=[{"cpu": "1", "memory": "2560Mi", GPU: "1"}])
    wait_until(lambda: any(n.held.extended == ((GPU, 1),) for n in rt.view.snapshot()),
               timeout=WATCH_SECONDS, what="the GPU held in the worker's view")
    body = fixture("gitlab_push_real_lrz.json")
    body["ref"] = "refs/heads/gpu-train"
    response = app.test_client().post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": "gpu-0"})
    assert response.status_code == 202
    key = response.json["build_key"]
    work(app)  # the provision, the give-way its wait queues
    rec = record(app, key)
    assert rec["status"] == "waiting" and rec["template"] == "gpu", rec
    assert idle_names(rt) == [warm] and warm in pod_names(kube)


def test_a_token_given_up_already_costs_no_second_agent(
        app, kube, jenkins_fake, monkeypatch, tmp_path):
    """The agent given up for the build stays Terminating a while (kmock's `hold_deletions`,
    until its kubelet confirms), its token still on its node in the view: the next give-way
    (the reconcile pass's) counts it the build's, and the idle agent on the other node stays."""
    app = reconfigured(monkeypatch, tmp_path, ONE_PER_NODE)
    for node in ("node-a", "node-b"):
        kube.add_node(node, cpu="8", memory="32Gi")
        kube.hold_deletions(node)
    rt = runtime.current()
    template = rt.config.templates["small"]
    for _ in range(2):
        agents.start(rt, "small", template, size=Resources(900, 768 * MI))
    for entry in pool_of(rt):
        kube.set_pod_phase(NAMESPACE, entry.name, "Running", node=entry.where)
        jenkins_fake.connect_agent(entry.name)
    pool.notice_online(rt)
    idle = idle_names(rt)
    assert len(idle) == 2 and len({e.where for e in pool_of(rt)}) == 2
    key = hinted_push(app.test_client(), 0, "CI_AUTOSCALER_MEMORY=1Gi")
    work(app)  # the provision, the give-way its wait queues, the re-drive (token still held)
    assert record(app, key)["status"] == "waiting", record(app, key)
    [gone] = set(idle) - set(idle_names(rt))
    assert kube.pod(NAMESPACE, gone)["metadata"].get("deletionTimestamp")
    assert giving_way.give_way(rt) == 0  # the reconcile pass's
    assert idle_names(rt) == [n for n in idle if n != gone]

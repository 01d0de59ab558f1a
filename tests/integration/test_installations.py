"""Two installations of ci-autoscaler sharing one Jenkins (staging and prod, two teams), on
real parts: one Jenkins fake, one kmock cluster with an agent namespace for each, one
redis-server with a key prefix and a queue for each; each installation has its web app, its
worker (RQ jobs run in this process under its runtime) and its reconcile pass. Neither
deletes, adopts or takes over the other's Jenkins agents."""

import time
from dataclasses import dataclass

import pytest

from service.app import create_app
from tests.integration.test_adoption import notify, ran_to_its_end
from tests.integration.test_reruns import push
from tests.support.app import production_env, work
from tests.support.gitlab_fake import captured_project_id
from workers import runtime
from workers.engine import reconcile
from workers.adapters.jenkins import NODE_DESCRIPTION, JenkinsAdapter
from workers.adapters.redis_state import BuildStatus
from workers.commit_statuses import sender as status_sender
from workers.config.settings import load_settings
from workers.core.keys import agent_name
from workers.core.label_probe import probe_name
from workers.core.routing import AGENT_PARAMETER

# the push fixture's project and commit (tests.integration.test_push_to_pod.PUSH)
PROJECT, SHA = "hephaestustest/demo-repository", "a4bf10d93a2d136f1db911b6f1c03d26d835a44f"
API_TOKEN = "glpat-installations-api-7Hq2"
CONFIG = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: "1", default: "1", max: "1"}
    memory: {min: 1Gi, default: 1Gi, max: 1Gi}
"""


@dataclass
class Installation:
    name: str
    app: object
    rt: runtime.Runtime

    @property
    def namespace(self) -> str:
        return self.rt.settings.agent_namespace

    @property
    def state(self):
        return self.rt.state

    def pods(self, kube) -> list[str]:
        return sorted(p["metadata"]["name"] for p in kube.pods(self.namespace))


@pytest.fixture
def installations(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace="ci-agents")
    kube.add_node("node-a", cpu="8", memory="32Gi")
    made = []
    try:
        for name in ("staging", "prod"):  # each its chart's ServiceAccount and RBAC
            monkeypatch.setenv("KUBECONFIG", str(kube.as_chart_service_account(f"{name}-agents")))
            settings = load_settings(installation=f"{name}/ci-autoscaler",
                                     key_prefix=f"{name}:", queue_name=name,
                                     agent_namespace=f"{name}-agents")
            made.append(Installation(name, create_app(settings),
                                     runtime.from_environment(settings)))
        yield made
    finally:
        for installation in made:
            installation.rt.close()


@pytest.fixture
def work_as(monkeypatch):
    """What that installation's worker does: its jobs run under its own runtime (set for
    this process directly: runtime.install would close the other's cluster watch)."""
    def run(installation: Installation) -> None:
        monkeypatch.setattr(runtime, "_current", installation.rt)
        work(installation.app)
    return run


def test_a_reconcile_pass_never_deletes_the_agents_of_another_installation(
        installations, kube, jenkins_fake, work_as):
    staging, prod = installations
    assert push(prod.app.test_client(), "delivery-1").status_code == 202
    work_as(prod)
    (theirs,) = jenkins_fake.nodes
    assert prod.pods(kube) == [theirs]
    # One of staging's own agents, left behind (no pod, no build): the pass does delete.
    staging.rt.jenkins.ensure_node("cia-left-behind", label="cia-left-behind",
                                   remote_fs="/home/jenkins/agent")

    result = reconcile.reconcile_once(staging.rt)

    assert result["jenkins_agents_deleted"] == 1
    assert list(jenkins_fake.nodes) == [theirs]  # prod's build goes on on its agent
    assert prod.pods(kube) == [theirs]
    assert reconcile.reconcile_once(prod.rt)["jenkins_agents_deleted"] == 0


def test_a_replay_of_another_installations_build_is_left_to_that_installation(
        installations, kube, jenkins_fake, work_as):
    staging, prod = installations
    client = prod.app.test_client()
    assert push(client, "delivery-1").status_code == 202
    work_as(prod)
    build, old_agent = ran_to_its_end(client, jenkins_fake, lambda: work_as(prod))
    assert jenkins_fake.nodes == {} and prod.pods(kube) == []

    replay = jenkins_fake.replay(build.queue_id)  # waits on prod's deleted agent

    assert reconcile.reconcile_once(staging.rt)["queue_items_adopted"] == 0
    work_as(staging)
    # Jenkins had no agent: staging's label probe made it name the label, prod's agent
    staging_probe = probe_name(staging.rt.settings.installation)
    assert list(jenkins_fake.nodes) == [staging_probe] and staging.pods(kube) == []
    assert reconcile.reconcile_once(prod.rt)["queue_items_adopted"] == 1  # prod's to serve
    work_as(prod)
    (new_agent,) = set(jenkins_fake.nodes) - {staging_probe}
    assert jenkins_fake.nodes[new_agent].label == replay.label and prod.pods(kube) == [new_agent]
    # Jenkins has an agent now: staging's next pass deletes its probe, and nothing else
    assert reconcile.reconcile_once(staging.rt)["label_probes_deleted"] == 1
    assert list(jenkins_fake.nodes) == [new_agent]


def test_the_same_push_to_two_installations_gets_an_agent_of_its_own_in_each(
        installations, kube, jenkins_fake, work_as):
    agents = {}
    for installation in installations:  # one push, one delivery id, sent to both hooks
        answer = push(installation.app.test_client(), "delivery-1")
        assert answer.status_code == 202
        work_as(installation)
        agents[installation.name] = installation.state.get_build(
            answer.json["build_key"])["agent"]

    assert len(set(agents.values())) == 2
    assert sorted(jenkins_fake.nodes) == sorted(agents.values())
    for installation in installations:
        agent = agents[installation.name]
        assert installation.pods(kube) == [agent]
        assert jenkins_fake.nodes[agent].description == \
            f"{NODE_DESCRIPTION} of installation {installation.name}/ci-autoscaler"
    # Each Jenkins build waits on its own installation's agent.
    assert sorted(b.parameters[AGENT_PARAMETER] for b in jenkins_fake.builds) == \
        sorted(agents.values())

    # A job that notifies both: prod's build ends, and staging's goes on.
    staging, prod = installations
    (prods,) = [b for b in jenkins_fake.builds if b.parameters[AGENT_PARAMETER] == agents["prod"]]
    jenkins_fake.finish_build(prods.queue_id)
    for installation in installations:
        assert notify(installation.app.test_client(), prods).status_code in (200, 202)
        work_as(installation)
    assert prod.pods(kube) == [] and staging.pods(kube) == [agents["staging"]]
    assert list(jenkins_fake.nodes) == [agents["staging"]]


def test_after_its_upgrade_an_installation_deletes_its_own_agents_of_before_and_no_others(
        installations, jenkins_fake):
    staging, _prod = installations
    # Registered by a version before installation identities: the plain description.
    before = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user,
                            token=jenkins_fake.token)
    mine, theirs = "cia-build-0123456789ab", "cia-build-ba9876543210"
    for name in (mine, theirs):
        before.ensure_node(name, label=name, remote_fs="/home/jenkins/agent")
    staging.state.add_build("build-before", {"status": BuildStatus.RELEASED, "agent": mine,
                                             "job": "build", "received_at": time.time()})

    assert reconcile.reconcile_once(staging.rt)["jenkins_agents_deleted"] == 1

    assert list(jenkins_fake.nodes) == [theirs]  # another's, whose build staging cannot know


def test_a_build_whose_agent_name_another_has_in_jenkins_fails_and_leaves_that_node_alone(
        installations, kube, jenkins_fake, work_as):
    staging, _prod = installations
    answer = push(staging.app.test_client(), "delivery-1")
    key = answer.json["build_key"]
    agent = agent_name("build", key, "staging/ci-autoscaler")
    taken = jenkins_fake.add_node(agent, label=agent, description="made by hand")

    work_as(staging)

    build = staging.state.get_build(key)
    assert build["status"] == BuildStatus.FAILED and "not this installation's" in build["error"]
    assert jenkins_fake.nodes[agent] is taken and taken.description == "made by hand"
    assert staging.pods(kube) == [] and kube.secrets(staging.namespace) == {}
    assert jenkins_fake.builds == []  # nothing triggered to wait on that node
    reconcile.reconcile_once(staging.rt)
    assert jenkins_fake.nodes[agent] is taken


def test_a_retried_trigger_never_takes_the_other_installations_build_for_its_own(
        installations, jenkins_fake, work_as):
    """The same push to both: one build key. Staging's first trigger fails (a proxy's 502);
    its retry looks for the build it may have started, by its own agent, not by that key,
    which prod's queued build carries too."""
    staging, prod = installations
    keys = {}
    for installation in (prod, staging):
        if installation is staging:
            jenkins_fake.fail_next(502, path_prefix="/job/build/buildWithParameters")
        keys[installation.name] = push(installation.app.test_client(),
                                       "delivery-1").json["build_key"]
        work_as(installation)

    assert keys["staging"] == keys["prod"]
    items = {i.name: int(i.state.get_build(keys[i.name])["queue_item"]) for i in installations}
    assert items["staging"] != items["prod"]
    assert sorted(b.queue_id for b in jenkins_fake.builds) == sorted(items.values())
    (stagings,) = [b for b in jenkins_fake.builds if b.queue_id == items["staging"]]
    assert stagings.parameters[AGENT_PARAMETER] == staging.state.get_build(
        keys["staging"])["agent"]


@pytest.fixture
def gitlab(monkeypatch, gitlab_fake):
    """GitLab's API for commit statuses, in the environment the installations read: ask for
    it before `installations`."""
    gitlab_fake.tokens[API_TOKEN] = {"api"}
    gitlab_fake.add_project(PROJECT, branches={"main": SHA}, project_id=captured_project_id())
    monkeypatch.setenv("GITLAB_URL", gitlab_fake.url)
    monkeypatch.setenv("GITLAB_API_TOKEN", API_TOKEN)
    return gitlab_fake


def test_the_same_push_to_two_installations_shows_a_commit_status_of_each_in_gitlab(
        gitlab, installations, jenkins_fake, work_as):
    """GitLab keeps one status per commit, name and ref. Before, both were named
    ci-autoscaler/build: prod's pending was refused (pending onto staging's pending), and
    prod's success moved staging's status to success while staging's build still ran."""
    senders = {}
    for installation in installations:  # the reconcile process's sender thread, pass by pass
        rt = installation.rt
        senders[installation.name] = status_sender.from_settings(rt.settings, rt.state,
                                                                 rt.capacity)
        senders[installation.name].queue.switch_on(ttl_seconds=300)
    agents = {}
    for installation in installations:  # one push, one delivery id, sent to both hooks
        answer = push(installation.app.test_client(), "delivery-1")
        work_as(installation)
        agents[installation.name] = installation.state.get_build(
            answer.json["build_key"])["agent"]
        assert status_sender.send_due(senders[installation.name]) == {"sent": 1}

    _staging, prod = installations
    (prods,) = [b for b in jenkins_fake.builds if b.parameters[AGENT_PARAMETER] == agents["prod"]]
    jenkins_fake.finish_build(prods.queue_id)
    assert notify(prod.app.test_client(), prods).status_code in (200, 202)
    work_as(prod)
    assert status_sender.send_due(senders["prod"]) == {"sent": 1}

    statuses = gitlab.projects[PROJECT].statuses
    assert {(s["name"], s["ref"]): s["status"] for s in statuses} == {
        ("ci-autoscaler/build (staging/ci-autoscaler)", "main"): "pending",
        ("ci-autoscaler/build (prod/ci-autoscaler)", "main"): "success"}
    assert [a for _, _, a in gitlab.status_history(PROJECT, SHA)] == [201, 201, 201]

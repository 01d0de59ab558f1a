"""The label probe on real parts (real redis-server, RQ worker, kmock over HTTP, the Jenkins
fake): while Jenkins has no agent at all, every queued build waits with "Waiting for next
available executor", naming no label (Queue.BuildableItem.getCauseOfBlockage); the reconcile
pass registers a node that runs nothing so that Jenkins names the label again, and adopts the
build in the same pass; the probe goes once nothing needs it, and no other repair takes it for
an agent."""

import logging
import time

import pytest

from tests.integration.test_adoption import CONFIG, agents, ran_to_its_end
from tests.integration.test_pod_templates import make_world  # noqa: F401
from tests.integration.test_reruns import pods, push
from tests.support.app import work
from tests.support.jenkins_fake import FREESTYLE_JOB, NO_LABEL_WHY
from workers import runtime
from workers.engine import reconcile
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.errors import PermanentError, Unauthorized
from workers.core.keys import is_agent_name_of, is_own_agent_name
from workers.core.label_probe import probe_description, probe_name
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER


@pytest.fixture(params=["", "prod/ci-autoscaler"], ids=["no installation", "installation"])
def world(request, make_world):  # noqa: F811
    env = {"CI_AUTOSCALER_INSTALLATION": request.param} if request.param else {}
    return make_world(CONFIG, **env)


def probe_of(rt) -> str:
    return probe_name(rt.settings.installation)


def node_reads(jenkins_fake) -> int:
    """How many times the node list was read for the probe (JenkinsAdapter.jenkins_nodes)."""
    return sum(r.query.get("tree") == "computer[displayName]"
               for r in jenkins_fake.requests_to("/computer/api/json"))


def why(rt, item) -> str:
    return {i.id: i.why for i in rt.jenkins.queue_items()}[item.queue_id]


@pytest.mark.parametrize("kind", ["freestyle build", "Pipeline node block"])
def test_a_build_started_in_jenkins_while_it_has_no_agent_is_adopted_in_one_pass(
        world, kube, jenkins_fake, kind):
    rt = runtime.current()
    if kind == "freestyle build":  # Build Now on a job restricted to the template's label
        jenkins_fake.add_job("app", parameters=None, kind=FREESTYLE_JOB)
        item = jenkins_fake.queue_build("app", label="maven")
    else:  # a Pipeline's node('maven') step
        item = jenkins_fake.queue_node_block("nightly", label="maven")
    assert jenkins_fake.nodes == {} and why(rt, item) == NO_LABEL_WHY  # no label named

    result = reconcile.reconcile_once(rt)
    assert result["label_probes_made"] == 1 and result["queue_items_adopted"] == 1
    probe = jenkins_fake.nodes[probe_of(rt)]
    assert (probe.label, probe.mode, probe.num_executors, probe.offline) == \
        ("", "EXCLUSIVE", 1, True)
    assert probe.description == probe_description(rt.settings.installation)
    assert not jenkins_fake.requests_to(f"/computer/{probe.name}/jenkins-agent.jnlp")
    work(world)
    (agent,) = agents(jenkins_fake)
    assert pods(kube) == [agent] and jenkins_fake.nodes[agent].label == "maven"

    # Jenkins has an agent now: the next pass deletes the probe, and nothing else.
    result = reconcile.reconcile_once(rt)
    assert result["label_probes_deleted"] == 1 and result["queue_items_adopted"] == 0
    assert list(jenkins_fake.nodes) == [agent]
    jenkins_fake.connect_agent(agent)
    assert jenkins_fake.dispatch() == [(item.queue_id, agent)]  # it waits no more


def test_the_probe_stays_while_a_build_waits_on_a_label_and_goes_when_none_does(
        world, kube, jenkins_fake):
    """A label we do not serve: the probe is what makes Jenkins name it, so it stays (deleted,
    the next pass would make it again, and so on every other pass) until that build is no
    longer waiting."""
    rt = runtime.current()
    item = jenkins_fake.queue_build("windows-app", label="windows")
    assert reconcile.reconcile_once(rt)["label_probes_made"] == 1
    assert why(rt, item) == "There are no nodes with the label ‘windows’"
    for _ in range(2):
        result = reconcile.reconcile_once(rt)
        assert result["label_probes_made"] == result["label_probes_deleted"] == 0
        assert result["queue_items_adopted"] == 0
    assert list(jenkins_fake.nodes) == [probe_of(rt)] and pods(kube) == []

    jenkins_fake.cancel_by_hand(item.queue_id)
    assert reconcile.reconcile_once(rt)["label_probes_deleted"] == 1
    assert jenkins_fake.nodes == {}
    reads = node_reads(jenkins_fake)
    result = reconcile.reconcile_once(rt)  # an empty queue: Jenkins' node list is not read
    assert result["label_probes_made"] == result["label_probes_deleted"] == 0
    assert node_reads(jenkins_fake) == reads



def test_a_probe_whose_record_redis_lost_is_deleted_all_the_same(world, kube, jenkins_fake):
    """Redis lost the record that this installation made the probe (a restart without AOF, a
    failover to a replica that had not got it; or every attempt at the create timed out while
    Jenkins made it): the probe makes every item name its label, so no item waits naming none,
    and a pass that read Jenkins' node list only then, or when it had made the probe, never
    looked again: the probe stayed for good. A pass with no fresh check reads the list (once
    an hour at most while nothing else asks for it)."""
    rt = runtime.current()
    item = jenkins_fake.queue_build("windows-app", label="windows")
    assert reconcile.reconcile_once(rt)["label_probes_made"] == 1
    rt.state.redis.flushdb()  # Redis comes back empty
    jenkins_fake.cancel_by_hand(item.queue_id)

    assert reconcile.reconcile_once(rt)["label_probes_deleted"] == 1
    assert jenkins_fake.nodes == {}
    reads = node_reads(jenkins_fake)
    for _ in range(2):  # checked: an empty queue costs no call again
        reconcile.reconcile_once(rt)
    assert node_reads(jenkins_fake) == reads



def test_a_rebuild_of_one_of_our_builds_while_jenkins_has_no_agent_is_adopted(
        world, kube, jenkins_fake):
    """A Rebuild of one of our freestyle builds (its label from CI_AUTOSCALER_AGENT) copies
    every parameter, CI_AUTOSCALER_BUILD_KEY too: its item was taken for one we triggered,
    whose agent is ours to make, so with no agent left in Jenkins (ours all released) no probe
    was made, Jenkins never named the gone agent's label, and the Rebuild waited for ever,
    though the adoption takes it once the label is named. An item that carries one of our
    build keys is ours only if it is that build's own queue item."""
    client, rt = world.test_client(), runtime.current()
    push(client, "delivery-1")
    work(world)
    build, old_agent = ran_to_its_end(client, jenkins_fake, lambda: work(world))
    assert jenkins_fake.nodes == {} and pods(kube) == []

    rebuild = jenkins_fake.queue_build(build.job, label=old_agent, parameters=build.parameters)
    assert rebuild.parameters[BUILD_KEY_PARAMETER] == build.parameters[BUILD_KEY_PARAMETER]
    result = reconcile.reconcile_once(rt)
    assert result["label_probes_made"] == 1 and result["queue_items_adopted"] == 1
    work(world)
    (agent,) = agents(jenkins_fake)
    assert jenkins_fake.nodes[agent].label == old_agent and pods(kube) == [agent]
    assert reconcile.reconcile_once(rt)["label_probes_deleted"] == 1


def test_our_own_builds_items_make_no_probe(world, kube, jenkins_fake):
    """A build of ours whose item waits while Jenkins has no agent (its agent being placed
    again, or a failed build's item that our user may not cancel: workers.engine.jenkins_leftovers)
    gets its agent from its own provision, or none: no probe for it."""
    client, rt = world.test_client(), runtime.current()
    push(client, "delivery-1")
    work(world)
    (build,) = jenkins_fake.builds
    assert rt.jenkins.delete_node(build.parameters[AGENT_PARAMETER])  # being placed again
    assert jenkins_fake.nodes == {}
    assert why(rt, build) == NO_LABEL_WHY
    result = reconcile.reconcile_once(rt)
    assert result["label_probes_made"] == 0 and jenkins_fake.nodes == {}


def test_a_build_of_a_job_restricted_to_no_label_gets_no_agent_and_no_probe_for_ever(
        world, kube, jenkins_fake):
    """With or without the probe, an item with no label waits naming none: no agent, and once
    seen so while the probe was there, the probe is not made again for it, pass after pass."""
    rt = runtime.current()
    item = jenkins_fake.queue_build("anywhere", label="")
    first = reconcile.reconcile_once(rt)
    assert first["label_probes_made"] == 1 and first["queue_items_adopted"] == 0
    assert why(rt, item) == NO_LABEL_WHY  # the probe there, it still names none
    assert reconcile.reconcile_once(rt)["label_probes_deleted"] == 1
    reads = node_reads(jenkins_fake)
    for _ in range(2):
        result = reconcile.reconcile_once(rt)
        assert result["label_probes_made"] == result["queue_items_adopted"] == 0
    assert node_reads(jenkins_fake) == reads  # nor its node list read again
    work(world)
    assert jenkins_fake.nodes == {} and pods(kube) == []

    # a build on a template's label, started then, is adopted all the same
    other = jenkins_fake.queue_node_block("nightly", label="maven")
    result = reconcile.reconcile_once(rt)
    assert result["label_probes_made"] == 1 and result["queue_items_adopted"] == 1
    work(world)
    (agent,) = agents(jenkins_fake)
    assert jenkins_fake.nodes[agent].label == "maven" and other.state == "queued"


def test_no_other_repair_lists_counts_or_deletes_the_probe_as_an_agent(
        world, kube, jenkins_fake):
    rt = runtime.current()
    jenkins_fake.queue_build("windows-app", label="windows")  # keeps the probe
    assert reconcile.reconcile_once(rt)["label_probes_made"] == 1
    probe = probe_of(rt)
    assert not is_agent_name_of(probe, "windows-app")
    assert not is_own_agent_name(probe, "windows-app", rt.settings.installation)
    assert rt.jenkins.list_agents() == [] and rt.jenkins.legacy_agents() == []
    assert rt.jenkins.online_agents() == set()  # nor the built-in node's computer
    assert rt.jenkins.jenkins_nodes() == [probe]
    assert rt.jenkins.delete_node(probe) is False  # an agent's release never deletes it
    later = time.time() + 7 * 24 * 3600  # past every deadline, lost-event and stall time
    result = reconcile.reconcile_once(rt, now=later)
    assert result["jenkins_agents_deleted"] == 0 and result["pods_deleted"] == 0
    assert result["label_probes_deleted"] == 0 and list(jenkins_fake.nodes) == [probe]


def test_a_jenkins_that_refuses_the_probe_logs_it_and_the_pass_goes_on(
        world, kube, jenkins_fake, caplog):
    """403: our user lacks Computer/Create (only agents of ours need it otherwise, and those
    are made by the provision, not by the pass)."""
    rt = runtime.current()
    item = jenkins_fake.queue_node_block("nightly", label="maven")
    jenkins_fake.fail_next(403, path_prefix="/computer/doCreateItem")
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.label_probe"):
        result = reconcile.reconcile_once(rt)
    assert result["label_probes_made"] == result["queue_items_adopted"] == 0
    assert result["jenkins_leftovers_stopped"] == 0  # the steps after it ran
    (line,) = [r for r in caplog.records if r.name == "ci_autoscaler.label_probe"]
    assert "refused" in line.getMessage() and "HTTP 403" in line.error
    assert jenkins_fake.nodes == {} and why(rt, item) == NO_LABEL_WHY

    result = reconcile.reconcile_once(rt)  # allowed now
    assert result["label_probes_made"] == 1 and result["queue_items_adopted"] == 1


def test_a_probe_of_the_same_name_that_is_not_ours_is_never_deleted(world, jenkins_fake):
    rt = runtime.current()
    jenkins_fake.add_node(probe_of(rt), description="made by hand")
    assert rt.jenkins.delete_label_probe() is False
    assert probe_of(rt) in jenkins_fake.nodes


# ---- the adapter: as ensure_node and delete_node, retried and translated -------------------

def adapter(fake, installation: str = "") -> JenkinsAdapter:
    return JenkinsAdapter(url=fake.url, user=fake.user or "", token=fake.token,
                          installation=installation,
                          backoff=Backoff(attempts=3, base_seconds=0.01, cap_seconds=0.02))


def test_the_probe_is_made_and_deleted_through_5xx_answers_once_each(jenkins_fake):
    jenkins = adapter(jenkins_fake, "prod/ci")
    name = probe_name("prod/ci")
    jenkins_fake.fail_next(502, times=2, path_prefix="/computer/doCreateItem")
    assert jenkins.ensure_label_probe() is True
    assert len(jenkins_fake.requests_to("/computer/doCreateItem", "POST")) == 3
    assert jenkins.ensure_label_probe() is False  # there: "already exists", not an error
    assert jenkins.jenkins_nodes() == [name]  # the built-in node's computer left out
    jenkins_fake.fail_next(503, path_prefix=f"/computer/{name}/doDelete")
    assert jenkins.delete_label_probe() is True and jenkins_fake.nodes == {}
    assert jenkins.delete_label_probe() is False  # gone: no error


@pytest.mark.parametrize("status, error", [(401, Unauthorized), (403, PermanentError)])
def test_a_refused_probe_says_why_and_a_403_is_not_asked_again(jenkins_fake, status, error):
    """401: our token refused (Unauthorized: the pass stops its Jenkins steps); 403: no
    Agent/Create (PermanentError: workers.engine.label_probe logs it and the pass goes on)."""
    jenkins_fake.fail_next(status, times=5, path_prefix="/computer/doCreateItem")
    with pytest.raises(error) as raised:
        adapter(jenkins_fake).ensure_label_probe()
    assert f"HTTP {status}" in str(raised.value) and jenkins_fake.token not in str(raised.value)
    if status == 403:
        assert len(jenkins_fake.requests_to("/computer/doCreateItem", "POST")) == 1

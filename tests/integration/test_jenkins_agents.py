"""What an agent runs and taking it offline: JenkinsAdapter against the Jenkins fake over real
HTTP, with the fake's queue handing items to agents as Jenkins' queue maintenance does."""

import time

import requests

from tests.integration.test_jenkins_adapter import adapter_for
from tests.support.jenkins_fake import NO_LABEL_WHY
from workers.core.ports import BuildState, RunRef

NODE = "cia-nightly-0123456789ab"


def test_a_node_block_waits_as_an_item_of_its_own_and_leaves_the_queue_as_its_run(
        jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    block = jenkins_fake.queue_node_block("folder/nightly", label="maven")
    (item,) = adapter.queue_items()
    assert (item.id, item.job, item.parameters) == (block.queue_id, "folder/nightly", {})
    assert item.why == NO_LABEL_WHY  # Jenkins has no agent at all: it names no label
    jenkins_fake.add_node("windows-1", label="windows")
    assert adapter.queue_items()[0].why == "There are no nodes with the label ‘maven’"
    assert adapter.build_state("folder/nightly", block.queue_id) == (BuildState.QUEUED, None)

    jenkins_fake.add_node(NODE, label="maven")
    jenkins_fake.connect_agent(NODE)
    assert jenkins_fake.dispatch() == [(block.queue_id, NODE)]

    assert adapter.queue_items() == []
    # The LeftItem's executable is the PlaceholderExecutable: it names the run by number.
    assert adapter.build_state("folder/nightly", block.queue_id) \
        == (BuildState.RUNNING, block.run.number)


def test_agent_activity_says_offline_until_it_connects_then_which_run_it_runs(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    assert adapter.agent_activity(NODE) is None
    jenkins_fake.add_node(NODE, label="maven")
    assert adapter.agent_activity(NODE).offline

    jenkins_fake.connect_agent(NODE)
    idle = adapter.agent_activity(NODE)
    assert (idle.offline, idle.temporarily_offline, idle.runs) == (False, False, ())
    block = jenkins_fake.queue_node_block("nightly", label="maven")
    jenkins_fake.dispatch()
    assert adapter.agent_activity(NODE).runs == (RunRef("nightly", block.run.number),)

    jenkins_fake.finish_node_block(block)
    assert adapter.agent_activity(NODE).runs == ()


def test_a_disabled_agent_keeps_its_run_and_takes_no_second_item(jenkins_fake):
    adapter = adapter_for(jenkins_fake)
    jenkins_fake.add_node(NODE, label="maven")
    jenkins_fake.connect_agent(NODE)
    first = jenkins_fake.queue_node_block("nightly", label="maven")
    jenkins_fake.dispatch()

    assert adapter.disable_agent(NODE, "ci-autoscaler: one build per agent") is True
    assert adapter.disable_agent(NODE, "again") is False  # read first: was offline already
    (toggle,) = jenkins_fake.requests_to(f"/computer/{NODE}/changeOfflineCause", "POST")
    assert toggle.query == {"offlineMessage": "ci-autoscaler: one build per agent"}
    assert jenkins_fake.crumb_valid(toggle)
    activity = adapter.agent_activity(NODE)
    assert activity.temporarily_offline and activity.runs == (RunRef("nightly", 1),)

    second = jenkins_fake.queue_node_block("nightly", label="maven")
    jenkins_fake.finish_node_block(first)  # its executor is idle again, and still offline
    assert jenkins_fake.dispatch() == []
    assert second.state == "queued"
    assert adapter.disable_agent("no-such-agent", "x") is False


def test_agents_connect_by_name_and_secret_one_process_per_node(jenkins_fake):
    """The fake is as strict as Jenkins about who connects (JenkinsFake.agent_connects): the
    secret is the name's HMAC, so a node made again under a name takes the same one; one
    process holds a node's channel, another is refused "already connected" until it ends; a
    deleted node's process is an unknown client."""
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label="maven", remote_fs="/home/jenkins/agent")
    first = adapter.agent_secret(NODE)
    assert jenkins_fake.agent_connects(NODE, "0" * 64, "pod-1") == "Authorization failure"
    assert jenkins_fake.agent_connects(NODE, first, "pod-1") is None
    assert not adapter.agent_activity(NODE).offline
    assert jenkins_fake.agent_connects(NODE, first, "pod-2") == \
        f"{NODE} is already connected to this controller. Rejecting this connection."
    assert jenkins_fake.agent_connects(NODE, first, "pod-1") is None  # its own reconnect
    assert jenkins_fake.agent_process_ends("pod-1") == [NODE]
    assert adapter.agent_activity(NODE).offline
    assert adapter.delete_node(NODE)
    assert jenkins_fake.agent_connects(NODE, first, "pod-1") == f"Unknown client name: {NODE}"
    adapter.ensure_node(NODE, label="maven", remote_fs="/home/jenkins/agent")
    assert adapter.agent_secret(NODE) == first  # made again: the same secret
    assert jenkins_fake.agent_connects(NODE, first, "pod-1") is None


def test_agent_activity_tells_when_a_connected_agent_lost_its_channel(jenkins_fake):
    """Computer.getOfflineCause as exported: only an agent that connected and whose channel
    closed under it has a ChannelTermination (SlaveComputer's channel listener); a connect
    clears it (setChannel), and a temporary offline is shown over it while it lasts (the node's
    temporary cause, Node.setTemporaryOfflineCause)."""
    adapter = adapter_for(jenkins_fake)
    adapter.ensure_node(NODE, label="maven", remote_fs="/home/jenkins/agent")
    secret = adapter.agent_secret(NODE)
    assert adapter.agent_activity(NODE).channel_lost_at is None  # never connected
    assert jenkins_fake.agent_connects(NODE, secret, "pod-1") is None
    assert adapter.agent_activity(NODE).channel_lost_at is None  # connected

    before = time.time()
    jenkins_fake.agent_process_ends("pod-1")
    lost = adapter.agent_activity(NODE)
    assert lost.offline and before - 0.001 <= lost.channel_lost_at <= time.time()
    assert lost.offline_reason.startswith("Connection was broken: ")

    assert jenkins_fake.agent_connects(NODE, secret, "pod-1") is None  # it reconnects
    assert adapter.agent_activity(NODE).channel_lost_at is None
    jenkins_fake.disconnect_agent(NODE)  # Jenkins' ping found it gone
    assert adapter.agent_activity(NODE).channel_lost_at is not None
    taken = requests.post(f"{jenkins_fake.url}/computer/{NODE}/changeOfflineCause",
                          params={"offlineMessage": "disk check"},
                          auth=(jenkins_fake.user, jenkins_fake.token),
                          headers=jenkins_fake.crumb_headers(), allow_redirects=False,
                          timeout=10)
    assert taken.status_code == 302  # a person takes it offline: a UserCause now
    by_hand = adapter.agent_activity(NODE)
    assert (by_hand.channel_lost_at, by_hand.offline_reason) == (None, "disk check")
    # brought back: the node's temporary cause is gone, and the computer's own shows again
    # (core 2.482 on: Computer.getOfflineCause, the node's temporary cause over it)
    adapter.enable_agent(NODE)
    assert adapter.agent_activity(NODE).channel_lost_at is not None


def test_an_agent_taken_offline_by_a_person_after_the_read_stays_offline(jenkins_fake):
    """disable_agent reads the agent online, then a person takes it offline before its POST.
    computer/NAME/toggleOffline flips the state (Computer.doToggleOffline), so it brought the
    agent back online, under the person's hand; changeOfflineCause sets it offline whatever
    it was (Computer.doChangeOfflineCause: setTemporarilyOffline(true, cause))."""
    adapter = adapter_for(jenkins_fake)
    jenkins_fake.add_node(NODE, label="maven")
    jenkins_fake.connect_agent(NODE)
    answer = jenkins_fake._node_page

    def read_then_person(name, page, request):
        response = answer(name, page, request)
        if name == NODE and page == "api/json":
            jenkins_fake.nodes[NODE].temporarily_offline = True  # a person, meanwhile
        return response
    jenkins_fake._node_page = read_then_person

    adapter.disable_agent(NODE, "ci-autoscaler: one build per agent")
    assert jenkins_fake.nodes[NODE].temporarily_offline

"""A Jenkins whose JVM runs in another language words its queue reasons in it for a client
that names none (Queue.Item.getWhy through Jenkins' LocaleProvider: the request's
Accept-Language, else the JVM's default; tests/support/jenkins_locale.py). The adoption reads
the label from those reasons (workers.core.jenkins_queue), and a parked build's wait shows
them: every request of ours asks for English. The fake answers in German otherwise, as such
a controller does."""

import pytest
import requests

from tests.integration.test_adoption import CONFIG, LOST_EVENT_SECONDS, adopted_block_running
from tests.integration.test_jenkins_adapter import NODE, REMOTE_FS, adapter_for
from tests.integration.test_pod_templates import make_world  # noqa: F401
from workers import runtime


@pytest.fixture
def world(make_world, jenkins_fake):
    jenkins_fake.jvm_language = "de"
    return make_world(CONFIG, CI_AUTOSCALER_LOST_EVENT_SECONDS=str(LOST_EVENT_SECONDS))


def test_the_fake_answers_a_client_naming_no_language_in_its_jvm_language(world, jenkins_fake):
    jenkins_fake.queue_build("hand-started", label="maven")
    answer = requests.get(f"{jenkins_fake.url}/queue/api/json",
                          auth=(jenkins_fake.user, jenkins_fake.token), timeout=5).json()
    assert [i["why"] for i in answer["items"]] == ["Warte auf den nächsten freien "
                                                   "Build-Prozessor"]


def test_queue_reasons_are_read_in_english_from_a_jenkins_in_german(world, jenkins_fake):
    rt = runtime.current()
    item = jenkins_fake.queue_build("hand-started", label="maven")
    jenkins_fake.add_node("static-1", label="windows")  # so Jenkins names the label
    assert {i.id: i.why for i in rt.jenkins.queue_items()}[item.queue_id] \
        == "There are no nodes with the label ‘maven’"


def test_a_build_started_by_hand_on_a_jenkins_in_german_gets_an_agent(
        world, kube, jenkins_fake):
    adopted_block_running(world, jenkins_fake)  # adopted, its agent given the block


def test_a_node_there_already_is_reused_on_a_jenkins_forced_to_another_language(jenkins_fake):
    # The Locale plugin forcing its language: Jenkins' 400 for a taken node name is worded in
    # it whatever we ask. A provision tried again after its node was made (an answer lost, a
    # task retried) meets that 400, as does the label probe left from an earlier pass.
    jenkins_fake.jvm_language, jenkins_fake.language_forced = "pt", True
    adapter = adapter_for(jenkins_fake)
    assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is True

    assert adapter.ensure_node(NODE, label=NODE, remote_fs=REMOTE_FS) is False

    assert list(jenkins_fake.nodes) == [NODE]
    # asked in English all along: the forced language overrides it
    assert {r.headers.get("Accept-Language") for r in jenkins_fake.requests} == {"en"}

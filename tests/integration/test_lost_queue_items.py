"""A Jenkins controller killed without its shutdown loses the queue items it took since its last
save of queue.xml, and gives their ids again. Real redis-server, kmock over HTTP, the Jenkins
fake (tests/support/jenkins_fake.py, "a controller restart": `go_down(hard=True)`,
`save_queue`, X-Jenkins-Session)."""

from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.retry import Backoff
from workers.core.ports import BuildState

AGENT = "CI_AUTOSCALER_AGENT"


def test_the_fake_loses_on_a_kill_what_it_had_not_saved_and_gives_those_ids_again(
        jenkins_fake):
    """The adapter reads X-Jenkins-Session (every API page has it, a new one on every start;
    a 404 has none). A clean stop saves the queue; a kill keeps what the last save held (ids
    and counter): the items queued since are gone, their pages 404, their ids taken again."""
    jenkins = JenkinsAdapter(url=jenkins_fake.url, user=jenkins_fake.user or "",
                             token=jenkins_fake.token, timeout=5,
                             backoff=Backoff(attempts=2, base_seconds=0))
    first = jenkins.session()
    assert first == jenkins_fake.session and len(first) == 8
    saved = jenkins.trigger_build("build", {AGENT: "cia-saved"})
    jenkins_fake.save_queue()
    unsaved = jenkins.trigger_build("build", {AGENT: "cia-unsaved"})

    jenkins_fake.restart(hard=True)

    assert jenkins.session() not in ("", first)
    assert [b.queue_id for b in jenkins_fake.lost_items] == [unsaved]
    assert jenkins.find_queue_item("build", AGENT, "cia-saved") == saved
    assert jenkins.find_queue_item("build", AGENT, "cia-unsaved") is None
    assert jenkins.build_state("build", unsaved) == (BuildState.UNKNOWN, None)  # 404, no run
    assert jenkins.trigger_build("build", {AGENT: "cia-next"}) == unsaved  # its id, again
    clean = jenkins.session()
    jenkins_fake.restart()
    assert jenkins.session() != clean
    assert {b.queue_id for b in jenkins_fake.builds} == {saved, unsaved}  # both kept

"""The demo's simulated cluster and Jenkins report what the real ones do about an agent's
start: container states per phase, an agent online once its pod runs, a queue item that can
be cancelled and a build that can be aborted."""

from workers.core.ports import BuildState, ContainerPhase, PodPhase
from workers.core.start_failures import start_failure
from workers.sim.cluster import SimCluster, uniform_nodes
from workers.sim.jenkins import SimJenkins

AGENT = "cia-agent-1"
MANIFEST = {"metadata": {"name": AGENT, "labels": {"app.kubernetes.io/managed-by":
                                                   "ci-autoscaler"}},
            "spec": {"containers": [{"name": "jnlp", "resources": {"requests": {
                "cpu": "500m", "memory": "1Gi"}}}]}}


def world():
    clock = [100.0]
    notes = []
    cluster = SimCluster(uniform_nodes(1), clock=lambda: clock[0])
    jenkins = SimJenkins(cluster=cluster, notify=notes.append, clock=lambda: clock[0],
                         build_seconds=(10, 10))
    return clock, cluster, jenkins, notes


def test_the_agent_container_reports_the_kubelets_states_and_goes_online_when_it_runs():
    clock, cluster, jenkins, _ = world()
    cluster.create_pod(MANIFEST)
    jenkins.ensure_node(AGENT, label=AGENT, remote_fs="/w")
    pending = cluster.get_pod(AGENT)
    assert [(c.phase, c.reason) for c in pending.containers] == [
        (ContainerPhase.WAITING, "ContainerCreating")]
    assert start_failure(pending) is None and jenkins.online_agents() == set()

    clock[0] += 2
    cluster.tick()
    up = cluster.get_pod(AGENT)
    assert up.phase == PodPhase.RUNNING and up.running_since is not None
    assert start_failure(up) is None
    assert jenkins.online_agents() == {AGENT}

    cluster.finish_pod(AGENT)
    (done,) = cluster.get_pod(AGENT).containers
    assert (done.phase, done.exit_code) == (ContainerPhase.TERMINATED, 0)


def test_a_queued_build_is_cancelled_and_a_running_one_aborted():
    clock, cluster, jenkins, notes = world()
    queued = jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "nobody"})
    jenkins.cancel_queue_item(queued)
    assert jenkins.build_state("build", queued) == (BuildState.CANCELLED, None)
    assert jenkins.queue_items() == []

    cluster.create_pod(MANIFEST)
    jenkins.ensure_node(AGENT, label=AGENT, remote_fs="/w")
    item = jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": AGENT})
    clock[0] += 2
    cluster.tick()
    jenkins.tick()
    state, number = jenkins.build_state("build", item)
    assert state == BuildState.RUNNING
    jenkins.abort_build("build", number)
    jenkins.tick()
    assert jenkins.build_state("build", item)[0] == BuildState.FINISHED
    assert [(n["build"]["phase"], n["build"].get("status")) for n in notes][-2:] == [
        ("COMPLETED", "ABORTED"), ("FINALIZED", "ABORTED")]


def test_a_build_placed_again_runs_on_the_node_that_has_its_first_agents_name_as_label():
    """A build placed again has a node of a new name whose label is its first agent's name,
    which its CI_AUTOSCALER_AGENT names (workers.engine.agent_names): the simulated Jenkins hands it
    the build, as Jenkins' queue does by label."""
    clock, cluster, jenkins, notes = world()
    item = jenkins.trigger_build("build", {"CI_AUTOSCALER_AGENT": "cia-first"})
    cluster.create_pod(MANIFEST)
    jenkins.ensure_node(AGENT, label="cia-first", remote_fs="/w")
    clock[0] += 2
    cluster.tick()
    jenkins.tick()
    state, number = jenkins.build_state("build", item)
    assert state == BuildState.RUNNING
    assert [r.number for r in jenkins.agent_activity(AGENT).runs] == [number]
    clock[0] += 10
    jenkins.tick()
    assert jenkins.build_state("build", item)[0] == BuildState.FINISHED
    assert cluster.get_pod(AGENT).containers[0].phase == ContainerPhase.TERMINATED


def test_a_notification_names_a_job_in_a_folder_whose_name_needs_escaping_as_jenkins_does():
    """The Notification plugin sends the job's short name (JobState.name: Job.getName) and its
    URL escaped (Job.getUrl: Util.rawEncode of each name); the web reads the full name from
    that URL. The simulation sent "job/team/app build/": the full name read was "team", and
    a COMPLETED of a job in a folder was ignored as another job's (its agent never released)."""
    from workers.core.routing import parse_jenkins_notification
    from workers.sim.jenkins import SimBuild, notification

    body = notification(SimBuild(job="team/app build+1", number=4, queue_id=9, parameters={}),
                        "COMPLETED", "SUCCESS")

    assert body["name"] == "app build+1"
    assert body["url"] == "job/team/job/app%20build+1/"
    assert body["build"]["full_url"] == "http://jenkins.sim/job/team/job/app%20build+1/4/"
    assert parse_jenkins_notification(body).full_job == "team/app build+1"

"""agentInjection false beside a container marked build: `jnlp` runs the image's own Jenkins
agent at the template's agentCpu/agentMemory, the marked container gets the build's size
(README, "Sizing with the agent"). The kubelet OOM-killing jnlp kills the agent, and the
build with it (Jenkins loses its node; REALITY.md: the build runs where the agent runs). The
worker's pod watch read kills of the sized containers only, so this one went unseen: the
build's end read as a plain failure or "canceled", nothing counted it, and nobody learned
that agentMemory was too small. Now it is the build's OOM kill for what the record, the
count and the commit status say; the job's memory is not doubled, nor the build started
again: the build's size does not size jnlp, so both would only repeat the kill.

On real parts: redis-server, kmock over HTTP, the Jenkins fake, the worker's own watch."""

from tests.integration.test_build_stages import record
from tests.integration.test_job_history import (
    NAMESPACE, SAMPLE_SECONDS, finish, usage)
from tests.integration.test_placement_on_cluster import push
from tests.support.app import one_template_config, work
from tests.support.kmock_cluster import terminated
from tests.support.monitoring import wait_until
from workers.core import commit_status
from workers.core.quantity import memory_bytes

TEMPLATE = """
image: jenkins/inbound-agent:3355.v388858a_47b_33-3-jdk21
agentInjection: false
agentMemory: 256Mi
retryOnOOM: true
containers:
  - {name: maven, image: "maven:3.9-eclipse-temurin-21", build: true}
cpu: {min: 500m, default: "1", max: "2"}
memory: {min: 512Mi, default: 1Gi, max: 4Gi}
"""


def test_the_own_agents_jnlp_oom_killed_is_the_builds_end_and_asks_for_agent_memory(
        app_on_cluster, kube, jenkins_fake):
    app = app_on_cluster(one_template_config(TEMPLATE, name="mvn"), namespace=NAMESPACE,
                         nodes=(("node-a", "16", "6Gi"),))
    key = push(app.test_client(), 0)
    work(app)
    rec = record(app, key)
    agent = rec["agent"]
    jnlp = next(c for c in kube.pod(NAMESPACE, agent)["spec"]["containers"]
                if c["name"] == "jnlp")
    assert jnlp["resources"]["limits"]["memory"] == "256Mi", jnlp
    # the agent's JVM killed; the build container runs on (restartPolicy Never: Running)
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        states={"jnlp": terminated("OOMKilled", 137)})
    wait_until(lambda: usage().oom_pending(agent), timeout=SAMPLE_SECONDS,
               what="the jnlp container's OOM kill seen by the worker's pod watch")
    finish(app, jenkins_fake, key, "FAILURE")

    ended = record(app, key)
    assert int(ended[commit_status.OOM_FIELD]) == 256 * 2**20, ended
    text = commit_status.wanted(ended).description
    assert "agent ran out of memory" in text and "agentMemory" in text, text
    assert usage().history("build", "mvn").oom_kills == 0  # the build's size is not the agent's
    assert usage().history("build", "mvn").oom_floor_bytes == 0
    assert "replaced_by" not in ended and len(jenkins_fake.builds) == 1  # no retry
    scrape = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'ci_autoscaler_oom_kills_total{template="mvn"} 1.0' in scrape


def test_the_build_containers_kill_after_jnlps_is_the_builds_and_raises_its_memory(
        app_on_cluster, kube, jenkins_fake):
    """The kubelet kills jnlp first, then the container marked build (at the build's size),
    before the build's release: the pod watch's second event carries both kills and marks
    the build container's (the one the build's size teaches). Its mark kept the first one's
    "the agent's own container" flag, so the build's kill was folded as the agent's: no
    floor, no retry, and the commit status asked for agentMemory."""
    app = app_on_cluster(one_template_config(TEMPLATE, name="mvn"), namespace=NAMESPACE,
                         nodes=(("node-a", "16", "6Gi"),))
    key = push(app.test_client(), 0)
    work(app)
    agent = record(app, key)["agent"]
    maven = memory_bytes(next(c for c in kube.pod(NAMESPACE, agent)["spec"]["containers"]
                              if c["name"] == "maven")["resources"]["limits"]["memory"])
    assert maven > 256 * 2**20, maven  # the build's size, not agentMemory
    kube.kubelet_status(NAMESPACE, agent, phase="Running",
                        states={"jnlp": terminated("OOMKilled", 137)})
    wait_until(lambda: usage().oom_pending(agent), timeout=SAMPLE_SECONDS,
               what="the jnlp container's OOM kill seen by the worker's pod watch")
    kube.kubelet_status(NAMESPACE, agent, phase="Failed", states={
        "jnlp": terminated("OOMKilled", 137), "maven": terminated("OOMKilled", 137)})
    run = usage()._run(agent)
    wait_until(lambda: usage().redis.hget(run, "oom_limit") == str(maven).encode(),
               timeout=SAMPLE_SECONDS, what="the build container's kill marked")
    finish(app, jenkins_fake, key, "FAILURE")

    ended = record(app, key)
    assert int(ended[commit_status.OOM_FIELD]) == maven, ended
    assert commit_status.OOM_AGENT_FIELD not in ended, ended
    assert "agentMemory" not in commit_status.wanted(ended).description
    assert usage().history("build", "mvn").oom_floor_bytes > 0  # its memory doubles
    assert "replaced_by" in ended  # started again with more memory (retryOnOOM)

"""Pod templates on the real path: a push through the web app, an RQ worker on a real Redis,
the pod created in kmock over HTTP, the build started in the Jenkins fake."""

import json
import logging

import pytest

from tests.integration.test_push_to_pod import NAMESPACE, PUSH
from tests.support.app import GITLAB_TOKEN, work
from tests.support.kmock_cluster import validate_manifest
from workers.adapters.kube_objects import effective_request
from workers.config.config_file import parse_file_config
from workers.core import podsize
from workers.core.cluster import Resources
from workers.core.containers import AGENT_INIT_CONTAINER, AGENT_VOLUME
from workers.core.models import DEFAULT_AGENT_IMAGE
from workers.core.pod_security import Level, required_level, violations

TWO_CONTAINERS = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: maven}
templates:
  maven:
    cpu: {min: "1", default: "2", max: "2"}
    memory: {min: 1Gi, default: 2Gi, max: 2Gi}
    workspaceVolume:
      persistentVolumeClaim: {claimName: workspaces}
    volumes:
      - name: maven-cache
        mountPath: /home/jenkins/.m2/repository
        nfs: {server: nfs.example.com, path: /exports/m2}
    containers:
      - name: maven
        image: maven:3.9-eclipse-temurin-21
        build: true
        env: {MAVEN_OPTS: "-Xmx1g"}
      - name: postgres
        image: postgres:16
        cpu: 200m
        memory: 512Mi
"""


@pytest.fixture
def make_world(app_on_cluster, kube):
    def make(config: str, nodes=(("node-a", "8", "32Gi"),), labels=None, **env):
        for name, cpu, memory in nodes:
            kube.add_node(name, cpu=cpu, memory=memory, labels=labels)
        return app_on_cluster(config, namespace=NAMESPACE, nodes=(), **env)
    return make


def push(client, n: int = 0, *, push_options=None):
    body = json.loads(PUSH)
    body["checkout_sha"] = body["after"] = f"{n + 1:040x}"
    if push_options is not None:
        body["push_options"] = push_options
    response = client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"push-{n}"})
    assert response.status_code == 202, response.json
    return response.json["build_key"]


def test_a_tool_container_template_runs_the_injected_agent_in_the_build_container(
        make_world, kube, jenkins_fake):
    app = make_world(TWO_CONTAINERS)
    push(app.test_client())
    work(app)

    [pod] = kube.pods(NAMESPACE)
    validate_manifest(pod)
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert list(containers) == ["maven", "postgres"]  # no jnlp: maven runs the agent
    # An init container copies the agent and its Java runtime into a shared emptyDir...
    [init] = spec["initContainers"]
    assert init["name"] == AGENT_INIT_CONTAINER and init["image"] == DEFAULT_AGENT_IMAGE
    assert init["command"] == ["cp", "-R", "/opt/java/openjdk", "/usr/share/jenkins/agent.jar",
                               "/jenkins-agent/"]
    assert init["volumeMounts"] == [{"name": AGENT_VOLUME, "mountPath": "/jenkins-agent"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[AGENT_VOLUME] == {"name": AGENT_VOLUME, "emptyDir": {}}
    # ...and the build container runs it, with no shell, from the environment Kubernetes
    # expands into the arguments.
    maven = containers["maven"]
    assert maven["command"] == ["/jenkins-agent/openjdk/bin/java"]
    assert maven["args"] == ["-XX:MaxRAM=268435456", "-jar", "/jenkins-agent/agent.jar",
                             "-url", "$(JENKINS_URL)", "-secret", "$(JENKINS_SECRET)",
                             "-name", "$(JENKINS_AGENT_NAME)",
                             "-workDir", "$(JENKINS_AGENT_WORKDIR)"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in maven["env"]}
    agent, node = next(iter(jenkins_fake.nodes.items()))
    assert env["JENKINS_URL"] == jenkins_fake.url and env["JENKINS_AGENT_NAME"] == agent
    # by reference to the agent's own Secret, which holds the node's secret
    assert env["JENKINS_SECRET"]["secretKeyRef"]["name"] in kube.secrets(NAMESPACE)
    assert env["MAVEN_OPTS"] == "-Xmx1g"
    assert env["JENKINS_AGENT_WORKDIR"] == "/home/jenkins/agent"
    # The agent's secret stays in the build container; the service runs its own command.
    assert node.secret not in str(containers["postgres"]) + str(init)
    assert "command" not in containers["postgres"] and "args" not in containers["postgres"]
    assert "tty" not in containers["postgres"]
    # Every container sees the same workspace and cache; only the build container the agent.
    assert volumes["workspace"]["persistentVolumeClaim"] == {"claimName": "workspaces"}
    assert volumes["maven-cache"]["nfs"]["server"] == "nfs.example.com"
    for c in containers.values():
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        expected = {"workspace": "/home/jenkins/agent",
                    "maven-cache": "/home/jenkins/.m2/repository"}
        if c["name"] == "maven":
            expected[AGENT_VOLUME] = "/jenkins-agent"
        assert mounts == expected, c["name"]
        assert c["workingDir"] == "/home/jenkins/agent"
    # Sizing gave the build container the template's size plus the agent's fixed request.
    assert maven["resources"]["requests"] == {"cpu": "2100m", "memory": "2304Mi"}
    assert containers["postgres"]["resources"]["requests"] == {"cpu": "200m", "memory": "512Mi"}
    assert init["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    # What placement counted is what the pod asks the scheduler for.
    template = parse_file_config(TWO_CONTAINERS).templates["maven"]
    assert effective_request(spec) == podsize.pod_total(template, Resources(2000, 2 * 2**30))
    assert len(jenkins_fake.builds) == 1


TMPFS = TWO_CONTAINERS.replace("    volumes:\n", "    volumes:\n      - {name: tmp, mountPath: /tmp, "
                               "emptyDir: {medium: Memory, sizeLimit: 1Gi}}\n")


def test_a_tmpfs_volume_is_in_the_build_containers_memory_and_what_placement_fits(
        make_world, kube, jenkins_fake):
    """A medium Memory emptyDir's pages count against the writing container's memory limit
    (Kubernetes docs, "Volumes", emptyDir), and kube-scheduler counts no sizeLimit: a 2Gi
    build filling its 1Gi /tmp was OOM-killed. Its build container asks 2Gi + the agent's
    256Mi + 1Gi, and the pod is what placement fitted."""
    app = make_world(TMPFS)
    push(app.test_client())
    work(app)
    [pod] = kube.pods(NAMESPACE)
    validate_manifest(pod)
    maven = next(c for c in pod["spec"]["containers"] if c["name"] == "maven")
    assert maven["resources"]["requests"]["memory"] == "3328Mi"
    assert maven["resources"]["limits"]["memory"] == "3328Mi"
    template = parse_file_config(TMPFS).templates["maven"]
    assert effective_request(pod["spec"]) == podsize.pod_total(
        template, Resources(2000, 2 * 2**30))


def test_without_agent_injection_the_pod_keeps_the_jnlp_container_running_image(
        make_world, kube, jenkins_fake):
    """The form for an image that carries its own agent: `jnlp` runs `image` with the agent's
    environment and its entry point, the tool containers stand beside it, no init container."""
    app = make_world(TWO_CONTAINERS.replace("    containers:\n",
                                            "    agentInjection: false\n    containers:\n"))
    push(app.test_client())
    work(app)

    [pod] = kube.pods(NAMESPACE)
    validate_manifest(pod)
    spec = pod["spec"]
    assert "initContainers" not in spec
    assert {v["name"] for v in spec["volumes"]} == {"workspace", "maven-cache"}
    containers = {c["name"]: c for c in spec["containers"]}
    assert list(containers) == ["jnlp", "maven", "postgres"]
    jnlp, maven = containers["jnlp"], containers["maven"]
    assert jnlp["image"] == DEFAULT_AGENT_IMAGE
    assert "command" not in jnlp and "args" not in jnlp  # the image's entry point
    assert "command" not in maven and "args" not in maven
    agent, node = next(iter(jenkins_fake.nodes.items()))
    assert [e["name"] for e in jnlp["env"]] == ["JENKINS_URL", "JENKINS_SECRET",
                                                "JENKINS_AGENT_NAME", "JENKINS_AGENT_WORKDIR"]
    assert node.secret not in str(maven) + str(containers["postgres"])
    # The build containers get the size, jnlp the agent's fixed request, as before.
    assert maven["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert jnlp["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    for c in containers.values():
        assert {m["name"] for m in c["volumeMounts"]} == {"workspace", "maven-cache"}
    # Hardened all the same: the nfs volume is all that keeps it from `restricted`.
    assert violations(pod, Level.RESTRICTED) == ["volumes[maven-cache]: nfs volumes are not "
                                                 "allowed"]
    assert len(jenkins_fake.builds) == 1


def test_placement_fits_the_pods_total_not_the_build_containers_alone(
        make_world, kube, jenkins_fake):
    """2.3 cores and 2.75Gi per pod: a 4-core node holds one pod, though it would hold
    two 2-core build containers alone."""
    fixed_size = TWO_CONTAINERS.replace('cpu: {min: "1"', 'cpu: {min: "2"')
    app = make_world(fixed_size, nodes=(("node-a", "4", "32Gi"),),
                     CI_AUTOSCALER_TARGET_UTILISATION="1")
    client = app.test_client()
    keys = [push(client, i) for i in range(2)]
    for _ in keys:
        work(app)
    state = app.extensions["ci_autoscaler"].state
    assert len(kube.pods(NAMESPACE)) == 1
    statuses = sorted(state.get_build(k)["status"] for k in keys)
    assert statuses == ["triggered", "waiting"]


INHERITED = """
routes:
  - {project: "*", ref: "refs/*", job: build, template: docker}
templates:
  base:
    agentImage: jenkins/inbound-agent:3309.v27b_9314fd1a_4-1-jdk21
    nodeSelector: {kubernetes.io/os: linux}
    env: {TZ: Europe/Berlin}
    containers:
      - {name: maven, image: "maven:3.9", build: true}
    podSpecPatch: |
      securityContext:
        runAsUser: 1001
        fsGroup: 1001
      containers:
        - name: maven
          env:
            - {name: MAVEN_CONFIG, value: ""}
  docker:
    inherit: base
    env: {DOCKER_HOST: "tcp://127.0.0.1:2375"}
    containers:
      - name: dind
        image: docker:27-dind
        args: ["--host=tcp://127.0.0.1:2375", "--tls=false"]
    podSpecPatch: |
      priorityClassName: ci-builds
      containers:
        - name: dind
          securityContext:
            privileged: true
            allowPrivilegeEscalation: true
            runAsUser: 0
            runAsNonRoot: false
            capabilities: null
          volumeMounts:
            - {name: docker-data, mountPath: /var/lib/docker}
      volumes:
        - name: docker-data
          emptyDir: {}
"""


def test_an_inherited_template_with_a_pod_spec_patch_gives_the_merged_spec(
        make_world, kube, jenkins_fake):
    app = make_world(INHERITED, labels={"kubernetes.io/os": "linux"})
    push(app.test_client())
    work(app)
    [pod] = kube.pods(NAMESPACE)
    validate_manifest(pod)  # the merged spec is a valid Kubernetes Pod
    spec = pod["spec"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert list(containers) == ["maven", "dind"]  # the parent's, then the child's
    [init] = spec["initContainers"]
    assert init["image"] == "jenkins/inbound-agent:3309.v27b_9314fd1a_4-1-jdk21"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # the parent's patch over the hardened defaults, key by key
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1001,
                                       "runAsGroup": 1000, "fsGroup": 1001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["priorityClassName"] == "ci-builds"  # child's patch
    maven_env = {e["name"]: e.get("value", e.get("valueFrom"))
                 for e in containers["maven"]["env"]}
    # env merged by name: the agent's, the template's env (parent and child), then the patch's
    assert {k: v for k, v in maven_env.items() if not k.startswith("JENKINS_")} == {
        "TZ": "Europe/Berlin", "DOCKER_HOST": "tcp://127.0.0.1:2375", "MAVEN_CONFIG": ""}
    # The patch made the Docker daemon a privileged root container, and only it.
    dind = containers["dind"]
    assert dind["args"] == ["--host=tcp://127.0.0.1:2375", "--tls=false"]
    assert dind["securityContext"] == {"privileged": True, "allowPrivilegeEscalation": True,
                                       "runAsUser": 0, "runAsNonRoot": False}
    assert containers["maven"]["securityContext"] == {"allowPrivilegeEscalation": False,
                                                      "capabilities": {"drop": ["ALL"]}}
    mounts = {m["mountPath"]: m["name"] for m in dind["volumeMounts"]}
    assert mounts == {"/home/jenkins/agent": "workspace", "/var/lib/docker": "docker-data"}
    assert {v["name"] for v in spec["volumes"]} == {"workspace", AGENT_VOLUME, "docker-data"}
    assert required_level(pod) is Level.PRIVILEGED
    assert violations(pod, Level.BASELINE) == [
        "containers[dind].securityContext.privileged: privileged containers are not allowed"]
    # the agent's secret and size were not touched by the patch: 1 core + the agent's 100m
    assert containers["maven"]["resources"]["requests"]["cpu"] == "1100m"
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] \
        == "false"
    assert len(jenkins_fake.builds) == 1


HINTED = """
routes:
  - {project: "*", ref: "refs/heads/*", job: build, template: maven}
  - project: "*"
    ref: "refs/tags/*"
    job: release
    template: maven
    parameters: {CI_AUTOSCALER_CPU: "3", CI_AUTOSCALER_MEMORY: "3Gi"}
templates:
  maven:
    cpu: {min: 500m, default: "1", max: "4"}
    memory: {min: 1Gi, default: 2Gi, max: 8Gi}
    containers:
      - {name: maven, image: "maven:3.9", build: true}
"""


def test_a_push_option_asking_for_64_cpus_gets_the_templates_max_and_a_log_line(
        make_world, kube, jenkins_fake, caplog):
    # A job that declares the hint: Jenkins drops a parameter its job does not declare.
    jenkins_fake.add_job("build", parameters=["CI_AUTOSCALER_AGENT", "CI_AUTOSCALER_BUILD_KEY",
                                              "CI_AUTOSCALER_CPU"])
    app = make_world(HINTED, nodes=(("node-a", "16", "64Gi"),))
    # as GitLab sends `git push -o ci.variable="CI_AUTOSCALER_CPU=64" -o ci.variable=...`
    options = {"ci": {"variable": {"CI_AUTOSCALER_CPU=64": 1, "OTHER=x": 1}}}
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.scheduling"):
        push(app.test_client(), push_options=options)
        work(app)
    [pod] = kube.pods(NAMESPACE)
    maven = next(c for c in pod["spec"]["containers"] if c["name"] == "maven")
    assert maven["resources"]["requests"]["cpu"] == "4100m"  # the max, plus the agent's 100m
    notes = [r for r in caplog.records if r.getMessage() == "size hint adjusted"]
    assert len(notes) == 1
    assert "CI_AUTOSCALER_CPU=64" in notes[0].hint and "clamped to its max 4" in notes[0].hint
    build = jenkins_fake.builds[0]  # the hint is passed on; other variables are not
    assert build.parameters["CI_AUTOSCALER_CPU"] == "64" and "OTHER" not in build.parameters


def test_a_jenkins_build_parameter_hint_is_the_builds_default_and_a_bad_one_is_ignored(
        make_world, kube, jenkins_fake, caplog):
    app = make_world(HINTED.replace('"3Gi"', '"lots"'), nodes=(("node-a", "16", "64Gi"),))
    body = json.loads(PUSH)
    body["ref"] = "refs/tags/v1.0.0"
    with caplog.at_level(logging.WARNING, logger="ci_autoscaler.scheduling"):
        response = app.test_client().post("/webhooks/gitlab", json=body, headers={
            "X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Token": GITLAB_TOKEN})
        assert response.status_code == 202
        work(app)
    [pod] = kube.pods(NAMESPACE)
    maven = next(c for c in pod["spec"]["containers"] if c["name"] == "maven")
    # 3 CPUs from the route's parameter; memory at the template's own sizing (the idle node
    # gives the max), since "lots" is no quantity: the build still runs. The agent's own
    # 100m and 256Mi come on top.
    assert maven["resources"]["requests"] == {"cpu": "3100m", "memory": "8448Mi"}
    assert any("CI_AUTOSCALER_MEMORY='lots' is not a Kubernetes quantity; ignored"
               in getattr(r, "hint", "") for r in caplog.records)

"""Pod templates on the real path: a push through the web app, an RQ worker on a real Redis,
the pod created in kmock over HTTP, the build started in the Jenkins fake."""

import json
import logging

import pytest

from tests.integration.test_push_to_pod import NAMESPACE, PUSH
from tests.support.app import GITLAB_TOKEN, production_env, work
from tests.support.kmock_cluster import validate_manifest
from service.app import create_app
from workers import runtime

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
      - name: node
        image: node:22
        cpu: 200m
        memory: 512Mi
"""


def start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config: str, **env):
    path = tmp_path / "config.yaml"
    path.write_text(config)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=path, namespace=NAMESPACE, **env)
    runtime.install(None)
    return create_app()


@pytest.fixture
def make_world(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    def make(config: str, nodes=(("node-a", "8", "32Gi"),), labels=None, **env):
        for name, cpu, memory in nodes:
            kube.add_node(name, cpu=cpu, memory=memory, labels=labels)
        return start(monkeypatch, tmp_path, redis_url, kube, jenkins_fake, config, **env)
    yield make
    runtime.install(None)


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


def test_a_two_container_template_gives_both_containers_one_shared_workspace(
        make_world, kube, jenkins_fake):
    app = make_world(TWO_CONTAINERS)
    push(app.test_client())
    work(app)

    [pod] = kube.pods(NAMESPACE)
    validate_manifest(pod)
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    assert list(containers) == ["jnlp", "maven", "node"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["workspace"]["persistentVolumeClaim"] == {"claimName": "workspaces"}
    assert volumes["maven-cache"]["nfs"]["server"] == "nfs.example.com"
    for c in containers.values():  # every container sees the same workspace and cache
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts == {"workspace": "/home/jenkins/agent",
                          "maven-cache": "/home/jenkins/.m2/repository"}
    # Sizing gave the build container the template's size; the agent its fixed request.
    assert containers["maven"]["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    assert containers["jnlp"]["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert containers["node"]["resources"]["requests"] == {"cpu": "200m", "memory": "512Mi"}
    assert containers["maven"]["workingDir"] == "/home/jenkins/agent"
    assert containers["maven"]["command"] == ["cat"] and containers["maven"]["tty"] is True
    assert {"name": "MAVEN_OPTS", "value": "-Xmx1g"} in containers["maven"]["env"]
    # the agent's secret stays in the agent container
    secret = next(iter(jenkins_fake.nodes.values())).secret
    assert all(secret not in str(c) for n, c in containers.items() if n != "jnlp")
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
  - {project: "*", ref: "refs/*", job: build, template: kaniko}
templates:
  base:
    image: jenkins/inbound-agent:3309.v27b_9314fd1a_4-1
    nodeSelector: {kubernetes.io/os: linux}
    env: {TZ: Europe/Berlin}
    containers:
      - {name: maven, image: "maven:3.9", build: true}
    podSpecPatch: |
      securityContext:
        runAsUser: 1000
        fsGroup: 1000
      containers:
        - name: maven
          env:
            - {name: MAVEN_CONFIG, value: /home/jenkins/.m2}
  kaniko:
    inherit: base
    env: {DOCKER_CONFIG: /kaniko/.docker}
    containers:
      - name: kaniko
        image: gcr.io/kaniko-project/executor:debug
        command: [/busybox/cat]
        tty: true
    podSpecPatch: |
      priorityClassName: ci-builds
      containers:
        - name: kaniko
          securityContext: {runAsUser: 0}
          volumeMounts:
            - {name: docker-config, mountPath: /kaniko/.docker}
      volumes:
        - name: docker-config
          secret: {secretName: registry-push}
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
    assert list(containers) == ["jnlp", "maven", "kaniko"]  # the parent's, then the child's
    assert containers["jnlp"]["image"] == "jenkins/inbound-agent:3309.v27b_9314fd1a_4-1"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["securityContext"] == {"runAsUser": 1000, "fsGroup": 1000}  # parent's patch
    assert spec["priorityClassName"] == "ci-builds"  # child's patch
    maven_env = {e["name"]: e["value"] for e in containers["maven"]["env"]}
    # env merged by name: the template's env (parent and child), then the patch's
    assert maven_env == {"TZ": "Europe/Berlin", "DOCKER_CONFIG": "/kaniko/.docker",
                         "MAVEN_CONFIG": "/home/jenkins/.m2"}
    kaniko = containers["kaniko"]
    assert kaniko["command"] == ["/busybox/cat"] and kaniko["securityContext"] == {"runAsUser": 0}
    mounts = {m["mountPath"]: m["name"] for m in kaniko["volumeMounts"]}
    assert mounts == {"/home/jenkins/agent": "workspace", "/kaniko/.docker": "docker-config"}
    assert {v["name"] for v in spec["volumes"]} == {"workspace", "docker-config"}
    # the agent's secret and size were not touched by the patch
    assert containers["maven"]["resources"]["requests"]["cpu"] == "1"
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
    assert maven["resources"]["requests"]["cpu"] == "4"
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
    # gives the max), since "lots" is no quantity: the build still runs
    assert maven["resources"]["requests"] == {"cpu": "3", "memory": "8Gi"}
    assert any("CI_AUTOSCALER_MEMORY='lots' is not a Kubernetes quantity; ignored"
               in getattr(r, "hint", "") for r in caplog.records)

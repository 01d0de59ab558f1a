"""The examples run as written: examples/ci-autoscaler.yaml and the README's templates load and
render valid pods whose build container has what the README's Jenkinsfile runs, and that
Jenkinsfile declares every parameter the routes pass and hands none to `sh` by Groovy
interpolation."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.payloads import EXAMPLE_CONFIG
from workers.config.config_file import load_file_config, parse_file_config
from workers.core.hints import HINTS
from workers.core.pod_security import Level, required_level
from workers.core.routing import AGENT_PARAMETER, BUILD_KEY_PARAMETER
from workers.config.pod_schema import KUBERNETES_SCHEMA_VERSION, sample_manifest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
HELM_VALUES = ROOT / "helm" / "ci-autoscaler" / "values.yaml"
# Images whose PATH has mvn: the official Maven images, and ours (images/agent-maven).
MAVEN_IMAGES = re.compile(r"^(maven:3\.9[^ ]*|(.*/)?ci-autoscaler-agent-maven:[^ ]+)$")


def section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n## ", start + 1)]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


JENKINSFILE = blocks(section("### A Jenkinsfile for the agent label"), "groovy")[0]


def declared_parameters(jenkinsfile: str) -> set[str]:
    return set(re.findall(r"\b(?:string|booleanParam|choice|text)\(\s*name:\s*'([^']+)'",
                          jenkinsfile))


def interpolated_sh(jenkinsfile: str) -> list[str]:
    """`sh` steps whose script is a double-quoted (interpolating) Groovy string that takes a
    value in with ${...} or $params: command injection when the value comes from outside."""
    scripts = re.findall(r'\bsh\s*\(?\s*(?:script:\s*)?("""(?:.|\n)*?"""|"(?:[^"\\\n]|\\.)*")',
                         jenkinsfile)
    return [s for s in scripts if "params." in s or re.search(r"\$\{|\$params", s)]


def test_the_interpolation_check_catches_a_double_quoted_sh_with_a_parameter():
    assert interpolated_sh('sh "git checkout ${params.GIT_COMMIT}"') != []
    assert interpolated_sh('sh(script: """mvn -Drev=${params.X}""")') != []
    assert interpolated_sh("sh 'git checkout \"$GIT_COMMIT\"'") == []


def test_the_readmes_jenkinsfile_declares_every_parameter_the_routes_pass():
    declared = declared_parameters(JENKINSFILE)
    passed = {AGENT_PARAMETER, BUILD_KEY_PARAMETER}
    for route in load_file_config(EXAMPLE_CONFIG).routes:
        passed |= set(route.parameters)
    for route in yaml.safe_load(HELM_VALUES.read_text())["config"]["routes"]:
        passed |= set(route.get("parameters") or {}) - set(HINTS)
    assert passed - declared == set(), "the Jenkinsfile does not declare these"
    assert f"label \"${{params.{AGENT_PARAMETER}}}\"" in JENKINSFILE


def test_the_readmes_jenkinsfile_hands_parameters_to_sh_only_through_the_environment():
    steps = re.findall(r"\bsh\s+'[^']*'", JENKINSFILE)
    assert steps, "the Jenkinsfile runs no sh step"
    assert interpolated_sh(JENKINSFILE) == []
    assert any("$GIT_COMMIT" in s for s in steps)


def test_no_pipeline_in_the_docs_or_examples_interpolates_into_a_double_quoted_sh():
    """Every Groovy block of the README and docs/, and every Jenkinsfile or .groovy file in
    examples/: a parameter (a branch name, a pusher's name: text from outside) reaches `sh` only
    through the environment (issue 17)."""
    texts = {"README.md": README} | {
        str(path.relative_to(ROOT)): path.read_text() for path in (ROOT / "docs").glob("*.md")}
    pipelines = {f"{name} block {i}": block for name, text in texts.items()
                 for i, block in enumerate(blocks(text, "groovy"))}
    pipelines |= {str(path.relative_to(ROOT)): path.read_text()
                  for path in (ROOT / "examples").rglob("*")
                  if path.name.startswith("Jenkinsfile") or path.suffix == ".groovy"}
    assert JENKINSFILE in pipelines.values()
    assert {name: interpolated_sh(text) for name, text in pipelines.items()
            if interpolated_sh(text)} == {}


def test_the_example_renders_every_template_as_a_valid_pod_whose_build_runs_mvn():
    config = load_file_config(EXAMPLE_CONFIG)
    assert "sh 'mvn -B verify'" in JENKINSFILE
    for name, template in config.templates.items():
        pod = sample_manifest(name, template)
        kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
        build = next(c for c in pod["spec"]["containers"] if "-jar" in (c.get("args") or []))
        assert MAVEN_IMAGES.match(build["image"]), (name, build["image"])
        assert pod["spec"]["initContainers"][0]["image"].startswith("jenkins/inbound-agent:")
        env = {e["name"]: e.get("value") for e in build["env"]}
        # uid 1000 gets a writable HOME and Maven repository (the image's are under /root)
        mounts = {m["mountPath"]: m for m in build["volumeMounts"]}
        assert env["HOME"] in mounts and "/var/cache/maven" in mounts
        assert "-Dmaven.repo.local=" in env["MAVEN_ARGS"]
    routed = {r.template for r in config.routes}
    assert routed == {"maven", "maven-cache-writer"}
    for name in routed:
        assert required_level(sample_manifest(name, config.templates[name])) is \
            Level.RESTRICTED
    assert required_level(sample_manifest("maven-docker", config.templates["maven-docker"])) \
        is Level.PRIVILEGED


def test_the_examples_shared_maven_cache_is_read_only_but_for_one_trusted_writer():
    """Issue 17: a shared cache every build writes lets one project's branch build plant an
    artifact that another project's release build trusts. Every routed template mounts the
    shared cache read-only and keeps its own local repository, but the one writer, routed for
    one project's default branch only."""
    config = load_file_config(EXAMPLE_CONFIG)
    writers = []
    for route in config.routes:
        pod = sample_manifest(route.template, config.templates[route.template])
        build = next(c for c in pod["spec"]["containers"] if "-jar" in (c.get("args") or []))
        mount = next(m for m in build["volumeMounts"] if m["mountPath"] == "/var/cache/maven")
        args = next(e["value"] for e in build["env"] if e["name"] == "MAVEN_ARGS")
        if mount.get("readOnly"):
            assert "-Dmaven.repo.local=/home/jenkins/.m2/repository" in args
            assert "-Dmaven.repo.local.tail=/var/cache/maven" in args
        else:
            writers.append((route.project, route.ref))
    assert writers == [("ci/maven-cache", "refs/heads/main")]
    assert "### Caches that builds cannot poison" in README


def test_the_example_names_folder_jobs_the_way_python_jenkins_takes_them():
    text = EXAMPLE_CONFIG.read_text()
    assert '"folder/job/name"' not in text and '"folder/name"' in text
    assert all("/job/" not in r.job for r in load_file_config(EXAMPLE_CONFIG).routes)


def readme_templates() -> str:
    templates: dict = {}
    for block in blocks(section("## Pod templates"), "yaml"):
        templates.update(yaml.safe_load(block)["templates"])
    return yaml.safe_dump({"routes": [{"job": "build", "template": "maven"}],
                           "templates": templates})


@pytest.mark.parametrize("name", ["maven", "maven-postgres", "maven-docker"])
def test_the_readmes_pod_templates_load_and_render(name):
    config = parse_file_config(readme_templates(), source="README.md")
    pod = sample_manifest(name, config.templates[name])
    kubernetes_validate.validate(pod, KUBERNETES_SCHEMA_VERSION, strict=True)
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names[0] == "jnlp" and pod["spec"]["containers"][0]["image"].startswith("maven:")


def test_the_readmes_docker_in_docker_template_is_the_examples():
    readme = parse_file_config(readme_templates()).templates["maven-docker"]
    example = load_file_config(EXAMPLE_CONFIG).templates["maven-docker"]
    for field in ("containers", "pod_spec_patch"):
        assert getattr(readme, field) == getattr(example, field), field
    assert readme.env["DOCKER_HOST"] == example.env["DOCKER_HOST"]


def dockerd_command(container: dict) -> list[str]:
    """What the docker:*-dind image runs for this container, as its entry point decides
    (docker-library/docker, dockerd-entrypoint.sh): a `command` replaces the entry point; a
    first argument that is an option ("-..."), or none, gets `dockerd` and the entry point's
    own listeners put before it: with DOCKER_TLS_CERTDIR set (the image sets /certs) the unix
    socket and tcp://0.0.0.0:2376 with --tlsverify, which turns TLS on for every listener,
    whatever --tls says (dockerd: "if they specify TLSVerify at all then we need to turn on
    TLS"); with it empty, tcp://0.0.0.0:2375 without TLS, on every address of the pod. A first
    argument `dockerd` runs it with the given arguments alone."""
    if container.get("command"):
        return list(container["command"]) + list(container.get("args") or [])
    args = list(container.get("args") or [])
    if args and not args[0].startswith("-"):
        return args
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    if env.get("DOCKER_TLS_CERTDIR", "/certs"):
        return ["dockerd", "--host=unix:///var/run/docker.sock", "--host=tcp://0.0.0.0:2376",
                "--tlsverify", "--tlscacert", "/certs/server/ca.pem", *args]
    return ["dockerd", "--host=unix:///var/run/docker.sock", "--host=tcp://0.0.0.0:2375", *args]


@pytest.mark.parametrize("source", ["examples/ci-autoscaler.yaml", "README.md"])
def test_the_docker_in_docker_service_listens_where_the_build_looks_for_it(source):
    """The build's DOCKER_HOST is plain TCP on the pod's loopback: dockerd must listen there
    without TLS, and nowhere else (a daemon that runs anything as root, on the pod's address,
    is every pod's that reaches it). With the options alone as `args`, the image's entry point
    added its TLS listener on 0.0.0.0:2376 and --tlsverify, so 127.0.0.1:2375 spoke TLS and
    every `docker` call of the build failed ("Client sent an HTTP request to an HTTPS
    server")."""
    config = load_file_config(EXAMPLE_CONFIG) if source.startswith("examples") else \
        parse_file_config(readme_templates(), source="README.md")
    template = config.templates["maven-docker"]
    pod = sample_manifest("maven-docker", template)
    dind = next(c for c in pod["spec"]["containers"] if c["name"] == "dind")
    command = dockerd_command(dind)
    assert command[0] == "dockerd"
    hosts = [a.split("=", 1)[1] for a in command if a.startswith(("--host=", "-H="))]
    assert hosts == [template.env["DOCKER_HOST"]] == ["tcp://127.0.0.1:2375"]
    assert "--tlsverify" not in command and "--tls=false" in command


def test_the_dind_model_follows_the_images_entry_point():
    assert dockerd_command({"args": ["--tls=false"]})[:4] == [
        "dockerd", "--host=unix:///var/run/docker.sock", "--host=tcp://0.0.0.0:2376",
        "--tlsverify"]
    assert dockerd_command({"args": ["--tls=false"],
                            "env": [{"name": "DOCKER_TLS_CERTDIR", "value": ""}]})[2] == \
        "--host=tcp://0.0.0.0:2375"
    assert dockerd_command({"args": ["dockerd", "-H=tcp://127.0.0.1:1"]}) == [
        "dockerd", "-H=tcp://127.0.0.1:1"]


@pytest.mark.parametrize("name", ["maven", "maven-postgres"])
def test_the_readmes_pod_templates_share_the_maven_cache_read_only(name):
    """The README's first templates are the ones copied: a shared cache every build writes is
    the poisoning the README's "Caches that builds cannot poison" warns of (issue 17)."""
    config = parse_file_config(readme_templates(), source="README.md")
    pod = sample_manifest(name, config.templates[name])
    build = pod["spec"]["containers"][0]
    mount = next(m for m in build["volumeMounts"] if m["mountPath"] == "/var/cache/maven")
    args = next(e["value"] for e in build["env"] if e["name"] == "MAVEN_ARGS")
    assert mount.get("readOnly") is True
    assert "-Dmaven.repo.local.tail=/var/cache/maven" in args
    assert "-Dmaven.repo.local=/home/jenkins/" in args

"""`ci-autoscaler check-config FILE` warns (exit 0) about what a file that loads may still
break on a cluster: a ReadWriteOnce claim shared across nodes, a pod that needs a Pod
Security level below `restricted`, a folder job written as a URL path. Run as the installed
command, as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.payloads import EXAMPLE_CONFIG

COMMAND = Path(sys.executable).with_name("ci-autoscaler")


def check_config(path: Path) -> subprocess.CompletedProcess:
    assert os.access(COMMAND, os.X_OK), f"{COMMAND} is missing: pip install -e ."
    return subprocess.run([str(COMMAND), "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.removeprefix("warning: ") for line in result.stderr.splitlines()
            if line.startswith("warning: ")]


SHARED_CLAIM = """\
routes: [{job: build, template: maven}]
templates:
  maven:
    image: maven:3.9-eclipse-temurin-21
    volumes:
      - name: maven-cache
        mountPath: /var/cache/maven
        persistentVolumeClaim: {claimName: maven-cache}
"""


def test_a_read_write_once_claim_shared_across_nodes_is_warned_about(tmp_path):
    path = tmp_path / "ci.yaml"
    path.write_text(SHARED_CLAIM)
    result = check_config(path)
    [warning] = warnings_of(result)
    assert warning.startswith(f"{path}:6: templates.maven.volumes[0]: claim 'maven-cache' is "
                              "taken as ReadWriteOnce (no accessMode given)")
    assert "Multi-Attach" in warning and "accessMode: ReadWriteMany" in warning
    assert "maxConcurrent: 1" in warning and "ephemeral" in warning
    assert result.stdout.strip() == f"{path}: ok (1 routes, 1 templates, 1 warning)"


@pytest.mark.parametrize("fix", [
    "        accessMode: ReadWriteMany\n",
    "    maxConcurrent: 1\n",
    "    nodeSelector: {kubernetes.io/hostname: build-node}\n",
])
def test_a_claim_declared_shareable_or_used_by_one_pod_or_node_is_not(tmp_path, fix):
    path = tmp_path / "ci.yaml"
    path.write_text(SHARED_CLAIM + fix)
    result = check_config(path)
    assert warnings_of(result) == []
    assert result.stdout.strip() == f"{path}: ok (1 routes, 1 templates)"


DIND = """\
routes: [{job: build, template: docker}]
templates:
  docker:
    image: maven:3.9-eclipse-temurin-21
    containers:
      - {name: dind, image: "docker:27-dind", cpu: "1", memory: 2Gi}
    podSpecPatch: |
      containers:
        - name: dind
          securityContext: {privileged: true, allowPrivilegeEscalation: true,
                            runAsUser: 0, runAsNonRoot: false, capabilities: null}
  nfs:
    volumes:
      - {name: m2, mountPath: /m2, nfs: {server: nfs.example.com, path: /m2}}
"""


def test_a_template_that_needs_a_weaker_pod_security_level_says_which(tmp_path):
    path = tmp_path / "ci.yaml"
    path.write_text(DIND)
    docker, nfs = warnings_of(check_config(path))
    assert docker.startswith(f"{path}:3: templates.docker: its pods need a namespace whose "
                             "Pod Security level is privileged "
                             "(pod-security.kubernetes.io/enforce: privileged")
    assert docker.endswith("containers[dind].securityContext.privileged: privileged "
                           "containers are not allowed")
    assert nfs.startswith(f"{path}:12: templates.nfs: its pods need a namespace whose Pod "
                          "Security level is baseline")
    assert nfs.endswith("volumes[m2]: nfs volumes are not allowed")


def test_a_folder_job_written_as_a_url_path_is_warned_about(tmp_path):
    path = tmp_path / "ci.yaml"
    path.write_text("routes: [{job: team/job/build}]\n")
    [warning] = warnings_of(check_config(path))
    assert warning.startswith(f"{path}:1: routes[0].job: 'team/job/build' looks like a URL "
                              "path: a job in a folder is written folder/name ('team/build'?)")


def test_a_label_on_a_parent_no_route_names_is_warned_about(tmp_path):
    """Labels are no longer inherited (as the plugin's inheritFrom): a file that put the label
    on an unrouted base, for its one child, loads as before, but builds Jenkins queues on the
    label now get the base's pods; said, not silent. A routed parent's label is its own."""
    path = tmp_path / "ci.yaml"
    path.write_text("routes: [{job: build, template: maven}, {job: x, template: plain}]\n"
                    "templates:\n"
                    "  base: {label: maven}\n"
                    "  maven: {inherit: base, image: maven:3.9-eclipse-temurin-21}\n"
                    "  plain: {label: plain}\n"
                    "  plain-child: {inherit: plain}\n")
    [warning] = warnings_of(check_config(path))
    assert warning.startswith(f"{path}:3: templates.base.label: a child template does not "
                              "take its parent's label"), warning
    assert "get pods of 'base', which no route names, not of maven;" in warning


def test_the_example_warns_only_that_its_docker_template_needs_a_privileged_namespace():
    [warning] = warnings_of(check_config(EXAMPLE_CONFIG))
    assert "templates.maven-docker: its pods need a namespace whose Pod Security level is " \
           "privileged" in warning


@pytest.mark.parametrize("given", [".inf", '"NaN"', '"1_000Mi"', "1e999999999", "1e5000"])
def test_a_size_no_quantity_is_refused_naming_the_field_not_a_traceback(tmp_path, given):
    """`max: .inf` (YAML's infinity) or "NaN": check-config (and every process loading the
    file) ended in an OverflowError or decimal.InvalidOperation traceback, exit 1."""
    path = tmp_path / "sizes.yaml"
    path.write_text('routes:\n  - {project: "*", ref: "refs/*", job: build, template: small}\n'
                    "templates:\n  small:\n    cpu: {min: 500m, default: 1, max: 2}\n"
                    f"    memory: {{min: 256Mi, default: 512Mi, max: {given}}}\n")
    result = check_config(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}:6: templates.small.memory.max: not a "
                                    "quantity"), result.stderr


@pytest.mark.parametrize("given", [".inf", ".nan"])
def test_a_cpu_limit_factor_not_finite_is_refused_naming_the_field(tmp_path, given):
    """cpuLimitFactor: .inf passed its ge=1 and ended check-config in an OverflowError
    traceback (the limit in millicores), exit 1."""
    path = tmp_path / "factor.yaml"
    path.write_text('routes:\n  - {project: "*", ref: "refs/*", job: build, template: small}\n'
                    f"templates:\n  small:\n    cpuLimitFactor: {given}\n"
                    "    cpu: {min: 500m, default: 1, max: 2}\n"
                    "    memory: {min: 256Mi, default: 512Mi, max: 1Gi}\n")
    result = check_config(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}:5: templates.small.cpuLimitFactor: "), \
        result.stderr


@pytest.mark.parametrize("name", ["", "A=B", "CAF\u00c9"])
def test_an_env_name_kubernetes_refuses_is_refused_naming_the_template(tmp_path, name):
    """A template's env var named "" or "A=B" loaded, and the API server refused every build's
    pod (Pod spec...env[0].name: Invalid value; apimachinery IsEnvVarName and its relaxed
    form both refuse '=' and an empty name)."""
    path = tmp_path / "env.yaml"
    path.write_text('routes:\n  - {project: "*", ref: "refs/*", job: build, template: small}\n'
                    "templates:\n  small:\n    cpu: {min: 500m, default: 1, max: 2}\n"
                    "    memory: {min: 256Mi, default: 512Mi, max: 1Gi}\n"
                    f'    env: {{"{name}": "x"}}\n')
    result = check_config(path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {path}:7: templates.small.env"), result.stderr
    assert "not a name Kubernetes takes" in result.stderr


@pytest.mark.parametrize("where", ["containers", "podSpecPatch"])
@pytest.mark.parametrize("name", ["", "A=B"])
def test_an_env_name_kubernetes_refuses_beside_the_template_env_is_refused(tmp_path, where,
                                                                          name):
    """A service container's env, or a podSpecPatch container's, holds names as the template's
    env does; "" or "A=B" there loaded, and the API server refused every build's pod
    (apimachinery IsEnvVarName and IsRelaxedEnvVarName both refuse them)."""
    env = f'env: {{"{name}": "x"}}' if where == "containers" \
        else f'env: [{{name: "{name}", value: x}}]'
    block = ("    containers:\n      - {name: db, image: postgres:16, " + env + "}\n"
             if where == "containers" else
             "    podSpecPatch:\n      containers:\n        - {name: jnlp, " + env + "}\n")
    path = tmp_path / "env.yaml"
    path.write_text('routes:\n  - {project: "*", ref: "refs/*", job: build, template: small}\n'
                    "templates:\n  small:\n    cpu: {min: 500m, default: 1, max: 2}\n"
                    "    memory: {min: 256Mi, default: 512Mi, max: 1Gi}\n" + block)
    result = check_config(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: {path}:" in result.stderr and "not a name Kubernetes takes" in \
        result.stderr, result.stderr


@pytest.mark.parametrize("name", ["MY VAR", "1PASS", "a:b", ".."])
def test_an_env_name_only_a_relaxed_api_server_takes_is_warned_about(tmp_path, name):
    """The name check is Kubernetes' relaxed one (printable ASCII but '='), on by default from
    1.32 (KEP-4369, RelaxedEnvironmentVariableValidation: alpha 1.30, beta 1.32, GA 1.34);
    before, the API server refuses what is no [-._a-zA-Z][-._a-zA-Z0-9]* or is '..'-led
    (apimachinery IsEnvVarName), and every build's pod is a 422 there: said, not refused."""
    path = tmp_path / "env.yaml"
    path.write_text('routes:\n  - {project: "*", ref: "refs/*", job: build, template: small}\n'
                    "templates:\n  small:\n    cpu: {min: 500m, default: 1, max: 2}\n"
                    "    memory: {min: 256Mi, default: 512Mi, max: 1Gi}\n"
                    f'    env: {{"{name}": "x", GOOD_NAME: y}}\n'
                    f'    containers:\n      - {{name: db, image: pg, env: {{"{name}": "x"}}}}\n')
    warnings = warnings_of(check_config(path))
    assert [w.split(f"{name!r}: ")[0] for w in warnings] == [
        f"{path}:7: templates.small.env: ",
        f"{path}:9: templates.small.containers[0].env: "], warnings
    assert all("a Kubernetes before 1.32" in w for w in warnings), warnings


POD_ANTI_AFFINITY = """\
routes: [{job: build, template: heavy}]
templates:
  heavy:
    podSpecPatch:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {ci-autoscaler.io/template: heavy}}
              topologyKey: kubernetes.io/hostname
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule,
           labelSelector: {matchLabels: {ci-autoscaler.io/template: heavy}}}
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway}
"""


def test_pod_anti_affinity_and_a_topology_spread_placement_does_not_count_are_warned_about(
        tmp_path):
    """A Kubernetes-plugin template's "one heavy build per node" and zone spread: placement
    chooses nodes by their room, and kube-scheduler applies these only among the candidates
    it names, so they are said, not silently weakened."""
    path = tmp_path / "ci.yaml"
    # per zone: not counted (one per node of the template's own pods is, and not warned of:
    # core.pod_anti_affinity)
    path.write_text(POD_ANTI_AFFINITY.replace(
        "              topologyKey: kubernetes.io/hostname",
        "              topologyKey: topology.kubernetes.io/zone"))
    anti, spread = warnings_of(check_config(path))
    assert anti.startswith(f"{path}:6: templates.heavy.podSpecPatch.affinity.podAntiAffinity: "
                           "placement does not count a required podAntiAffinity")
    assert spread.startswith(f"{path}:10: templates.heavy.podSpecPatch."
                             "topologySpreadConstraints: placement does not count a topology "
                             "spread")
    preferred = POD_ANTI_AFFINITY.replace("requiredDuring", "preferredDuring").replace(
        "whenUnsatisfiable: DoNotSchedule", "whenUnsatisfiable: ScheduleAnyway").replace(
        "            - labelSelector:", "            - weight: 50\n              podAffinityTerm:"
        "\n                labelSelector:").replace(
        "              topologyKey: kubernetes.io/hostname\n      topology",
        "                topologyKey: kubernetes.io/hostname\n      topology")
    path.write_text(preferred)
    assert warnings_of(check_config(path)) == []
    path.write_text(POD_ANTI_AFFINITY)
    [spread] = warnings_of(check_config(path))
    assert "topologySpreadConstraints" in spread

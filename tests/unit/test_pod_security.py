"""workers.core.pod_security against the Pod Security Standards' rule tables, rule by rule:
a pod that meets `restricted` is admitted at every level, and each single change that breaks
one rule is refused at the levels that rule belongs to, naming the field."""

import copy
from typing import Any

import pytest

from workers.core.pod_security import Level, admits, required_level, violations


def restricted_pod() -> dict[str, Any]:
    container = {"name": "build", "image": "maven:3.9",
                 "securityContext": {"allowPrivilegeEscalation": False,
                                     "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "fsGroup": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "initContainers": [copy.deepcopy({**container, "name": "agent"})],
                     "containers": [container],
                     "volumes": [{"name": "ws", "emptyDir": {}},
                                 {"name": "m2", "persistentVolumeClaim": {"claimName": "m2"}}]}}


def test_a_pod_that_meets_restricted_is_admitted_everywhere():
    pod = restricted_pod()
    for level in Level:
        assert violations(pod, level) == []
    assert required_level(pod) is Level.RESTRICTED
    assert admits(None, pod) and admits("restricted", pod)


def _container(pod, index=0, group="containers"):
    return pod["spec"][group][index].setdefault("securityContext", {})


# (what breaks the rule, the lowest level it belongs to, a word of the message)
BASELINE_RULES = [
    (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork"),
    (lambda p: p["spec"].update(hostPID=True), "hostPID"),
    (lambda p: p["spec"].update(hostIPC=True), "hostIPC"),
    (lambda p: _container(p).update(privileged=True), "privileged"),
    (lambda p: _container(p, group="initContainers").update(privileged=True), "privileged"),
    (lambda p: _container(p)["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN"),
    (lambda p: p["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (lambda p: p["spec"]["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
     "hostPort"),
    (lambda p: _container(p).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions"),
    (lambda p: _container(p).update(seLinuxOptions={"user": "root"}), "user and role"),
    (lambda p: _container(p).update(procMount="Unmasked"), "procMount"),
    (lambda p: p["spec"]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
     "Unconfined"),
    (lambda p: _container(p).update(appArmorProfile={"type": "Unconfined"}), "appArmor"),
    (lambda p: p["metadata"].setdefault("annotations", {}).update(
        {"container.apparmor.security.beta.kubernetes.io/build": "unconfined"}), "AppArmor"),
    (lambda p: p["spec"]["securityContext"].update(sysctls=[{"name": "kernel.msgmax",
                                                             "value": "1"}]), "sysctl"),
    (lambda p: _container(p).update(windowsOptions={"hostProcess": True}), "hostProcess"),
]
RESTRICTED_RULES = [
    (lambda p: p["spec"]["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
     "nfs"),
    (lambda p: _container(p).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda p: _container(p).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    (lambda p: p["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
    (lambda p: _container(p).update(runAsNonRoot=False), "runAsNonRoot"),
    (lambda p: p["spec"]["securityContext"].update(runAsUser=0), "runAsUser"),
    (lambda p: _container(p).update(runAsUser=0), "runAsUser"),
    (lambda p: p["spec"]["securityContext"].pop("seccompProfile"), "seccompProfile"),
    (lambda p: _container(p)["capabilities"].update(drop=["NET_RAW"]), "drop"),
    (lambda p: _container(p)["capabilities"].update(add=["CHOWN"]), "NET_BIND_SERVICE"),
]


@pytest.mark.parametrize("breaks,word", BASELINE_RULES)
def test_each_baseline_rule_is_refused_by_baseline_and_restricted(breaks, word):
    pod = restricted_pod()
    breaks(pod)
    for level in (Level.BASELINE, Level.RESTRICTED):
        found = violations(pod, level)
        assert found and any(word in v for v in found), (level, found)
    assert violations(pod, Level.PRIVILEGED) == []
    assert required_level(pod) is Level.PRIVILEGED


@pytest.mark.parametrize("breaks,word", RESTRICTED_RULES)
def test_each_restricted_rule_is_refused_by_restricted_only(breaks, word):
    pod = restricted_pod()
    breaks(pod)
    found = violations(pod, Level.RESTRICTED)
    assert found and any(word in v for v in found), found
    assert violations(pod, Level.BASELINE) == []
    assert required_level(pod) is Level.BASELINE


def test_container_level_settings_stand_in_for_pod_level_ones():
    pod = restricted_pod()
    pod["spec"]["securityContext"] = {}
    for group in ("initContainers", "containers"):
        _container(pod, group=group).update(runAsNonRoot=True,
                                            seccompProfile={"type": "Localhost",
                                                            "localhostProfile": "p.json"})
    assert violations(pod, Level.RESTRICTED) == []


def test_a_bare_pod_spec_is_checked_too():
    spec = restricted_pod()["spec"]
    spec["hostPID"] = True
    assert violations(spec, "baseline") == ["hostPID: host namespaces are not allowed"]

"""The API server's PodSecurity admission for kmock: a pod created in a namespace labelled
``pod-security.kubernetes.io/enforce: baseline|restricted`` is refused 403 Forbidden unless every
container (init and ephemeral ones too) meets the level, as REALITY.md "Pod Security" says.

Written from k8s.io/pod-security-admission (policy/check_*.go, admission/admission.go) and the
Kubernetes docs "Pod Security Standards" (v1.30 tables), on its own: not with
workers.core.pod_security, so the fake does not agree with the product by construction.
Limits: the level's version label is read but every version is checked as `latest`; seLinux,
procMount, sysctls, AppArmor and Windows hostProcess are not checked (our pods set none).
"""

from __future__ import annotations

from typing import Any

ENFORCE = "pod-security.kubernetes.io/enforce"
ENFORCE_VERSION = "pod-security.kubernetes.io/enforce-version"
# check_capabilities_baseline.go: capabilities baseline lets a container add
_BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                  "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
# check_restrictedVolumes.go: the volume sources restricted allows
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for group in ("initContainers", "containers", "ephemeralContainers")
            for c in spec.get(group) or []]


def _names(containers: list[dict[str, Any]]) -> str:
    """pod-security-admission's wording of the containers at fault (policy/helpers: "container
    "a"", "containers "a", "b"")."""
    quoted = ", ".join(f'"{c.get("name", "")}"' for c in containers)
    return f"container {quoted}" if len(containers) == 1 else f"containers {quoted}"


def _baseline(spec: dict[str, Any], level: str) -> list[str]:
    """The baseline checks. At `restricted`, the baseline checks a restricted one replaces
    (registry.go: `Overlap` checks, run at baseline only: capabilities_baseline,
    seccompProfile_baseline, hostPathVolumes) are left to it."""
    out = []
    overlapping = level == "baseline"
    pod_sc = spec.get("securityContext") or {}
    containers = _containers(spec)
    # check_hostNamespaces.go
    host = [f"{f}=true" for f in ("hostNetwork", "hostPID", "hostIPC") if spec.get(f)]
    if host:
        out.append(f"host namespaces ({', '.join(host)})")
    # check_privileged.go
    if bad := [c for c in containers if (c.get("securityContext") or {}).get("privileged")]:
        out.append(f"privileged ({_names(bad)} must not set securityContext.privileged=true)")
    # check_capabilities_baseline.go
    added = sorted({cap for c in containers for cap in
                    ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
                    if cap not in _BASELINE_CAPS})
    if added and overlapping:
        out.append("non-default capabilities (" + ", ".join(f'"{a}"' for a in added) + ")")
    # check_hostPathVolumes.go
    if overlapping and (paths := [v.get("name", "") for v in spec.get("volumes") or []
                                  if "hostPath" in v]):
        out.append("hostPath volumes (" + ", ".join(f'volume "{p}"' for p in paths) + ")")
    # check_hostPorts.go: 'containers "a", "b" use hostPorts 80, 8080' (sorted as strings)
    bad = [c for c in containers if any(p.get("hostPort") for p in c.get("ports") or [])]
    ports = sorted({str(p["hostPort"]) for c in bad for p in c.get("ports") or []
                    if p.get("hostPort")})
    if bad:
        out.append(f"hostPort ({_names(bad)} {'uses' if len(bad) == 1 else 'use'} "
                   f"{'hostPort' if len(ports) == 1 else 'hostPorts'} {', '.join(ports)})")
    # check_seccompProfile_baseline.go
    unconfined = (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined" or any(
        ((c.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
        == "Unconfined" for c in containers)
    if unconfined and overlapping:
        out.append('seccompProfile (pod or containers must not set type to "Unconfined")')
    return out


def _restricted(spec: dict[str, Any]) -> list[str]:
    out = []
    pod_sc = spec.get("securityContext") or {}
    containers = _containers(spec)

    def sc(c: dict[str, Any]) -> dict[str, Any]:
        return c.get("securityContext") or {}
    # check_restrictedVolumes.go
    for v in spec.get("volumes") or []:
        kinds = [k for k in v if k != "name"]
        if kinds and kinds[0] not in _RESTRICTED_VOLUMES:
            out.append(f'restricted volume types (volume "{v.get("name", "")}" uses restricted '
                       f'volume type "{kinds[0]}")')
    # check_allowPrivilegeEscalation.go: must be set to false explicitly
    if bad := [c for c in containers if sc(c).get("allowPrivilegeEscalation") is not False]:
        out.append(f"allowPrivilegeEscalation != false ({_names(bad)} must set "
                   "securityContext.allowPrivilegeEscalation=false)")
    # check_capabilities_restricted.go: drop ALL, add nothing but NET_BIND_SERVICE
    if bad := [c for c in containers
               if "ALL" not in ((sc(c).get("capabilities") or {}).get("drop") or [])]:
        out.append(f'unrestricted capabilities ({_names(bad)} must set '
                   f'securityContext.capabilities.drop=["ALL"])')
    if bad := [c for c in containers if set((sc(c).get("capabilities") or {}).get("add") or [])
               - {"NET_BIND_SERVICE"}]:
        out.append(f'unrestricted capabilities ({_names(bad)} must not include capabilities '
                   'beyond "NET_BIND_SERVICE" in securityContext.capabilities.add)')
    # check_runAsNonRoot.go: the pod's true, or each container's; an explicit false fails
    setters = (["pod"] if pod_sc.get("runAsNonRoot") is False else []) + (
        [_names(b)] if (b := [c for c in containers if sc(c).get("runAsNonRoot") is False])
        else [])
    unset = [c for c in containers if sc(c).get("runAsNonRoot") is None]
    if setters:
        out.append(f"runAsNonRoot != true ({' and '.join(setters)} must not set "
                   "securityContext.runAsNonRoot=false)")
    elif pod_sc.get("runAsNonRoot") is not True and unset:
        out.append(f"runAsNonRoot != true (pod or {_names(unset)} must set "
                   "securityContext.runAsNonRoot=true)")
    # check_runAsUser.go
    if pod_sc.get("runAsUser") == 0 or any(sc(c).get("runAsUser") == 0 for c in containers):
        out.append("runAsUser=0 (pod and containers must not set runAsUser=0)")
    # check_seccompProfile_restricted.go: the pod's RuntimeDefault/Localhost, or each
    # container's; one set to another type (Unconfined) is named as a bad setter
    pod_profile = pod_sc.get("seccompProfile")
    pod_ok = pod_profile is not None and pod_profile.get("type") in _SECCOMP_OK
    explicit = [c for c in containers if sc(c).get("seccompProfile") is not None
                and sc(c)["seccompProfile"].get("type") not in _SECCOMP_OK]
    setters = (["pod"] if pod_profile is not None and not pod_ok else []) + (
        [_names(explicit)] if explicit else [])
    values = sorted({str((p or {}).get("type")) for p in
                     ([pod_profile] if pod_profile is not None and not pod_ok else [])
                     + [sc(c)["seccompProfile"] for c in explicit]})
    implicit = [c for c in containers if sc(c).get("seccompProfile") is None and not pod_ok]
    if setters:
        out.append(f"seccompProfile ({' and '.join(setters)} must not set "
                   "securityContext.seccompProfile.type to "
                   + ", ".join(f'"{v}"' for v in values) + ")")
    elif implicit:
        out.append(f'seccompProfile (pod or {_names(implicit)} must set '
                   'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")')
    return out


def refusal(pod: dict[str, Any], namespace: dict[str, Any] | None
            ) -> tuple[int, str, str] | None:
    """(status, reason, message) of the API server's refusal, or None when admitted
    (admission.go: `pods "NAME" is forbidden: violates PodSecurity "LEVEL:VERSION": ...`,
    403 Forbidden)."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get(ENFORCE, "privileged")
    if level not in ("baseline", "restricted"):
        return None
    spec = pod.get("spec") or {}
    broken = _baseline(spec, level) + (_restricted(spec) if level == "restricted" else [])
    if not broken:
        return None
    name = (pod.get("metadata") or {}).get("name", "")
    version = labels.get(ENFORCE_VERSION, "latest")
    return (403, "Forbidden", f'pods "{name}" is forbidden: violates PodSecurity '
                              f'"{level}:{version}": {", ".join(broken)}')

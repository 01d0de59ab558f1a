"""The Pod Security Standards, as the API server's admission applies them: which rules of the
`baseline` and `restricted` profiles a pod breaks, and the least permissive level that admits
it. Pure: a manifest (or a pod spec) in, readable violations out.

Source: Kubernetes docs, "Pod Security Standards" (the rule tables of the baseline and
restricted profiles, v1.30) and k8s.io/pod-security-admission/policy (check_*.go). Each rule
below names its check. Checked on containers, initContainers and ephemeralContainers alike.
"""

from collections.abc import Iterator
from enum import StrEnum
from typing import Any

# The label on a namespace that sets the level the admission enforces.
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"


class Level(StrEnum):
    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"


ORDER = (Level.RESTRICTED, Level.BASELINE, Level.PRIVILEGED)  # most restrictive first

# check_capabilities_baseline.go: what baseline lets a container add.
BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})
# check_capabilities_restricted.go: the one capability restricted lets a container add.
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# check_restrictedVolumes.go: the volume sources restricted allows.
RESTRICTED_VOLUMES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret"})
# check_sysctls.go (1.29+): the "safe" sysctls baseline allows.
SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"})
# check_seLinuxOptions.go: the SELinux types baseline allows ("" = unset).
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                           "container_engine_t"})
# check_seccompProfile_*.go / check_appArmorProfile.go
SECCOMP_ALLOWED = frozenset({"RuntimeDefault", "Localhost"})
_CONTAINER_GROUPS = ("initContainers", "containers", "ephemeralContainers")


def _spec_and_meta(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if "spec" in pod and isinstance(pod["spec"], dict):
        return pod["spec"], pod.get("metadata") or {}
    return pod, {}


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group in _CONTAINER_GROUPS:
        for c in spec.get(group) or []:
            yield f"{group}[{c.get('name', '?')}]", c


def _baseline(spec: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    out = []
    pod_sc = spec.get("securityContext") or {}
    # check_hostNamespaces.go
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(f"{field}: host namespaces are not allowed")
    # check_windowsHostProcess.go
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("securityContext.windowsOptions.hostProcess: not allowed")
    # check_hostPathVolumes.go
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            out.append(f"volumes[{v.get('name', '?')}]: hostPath volumes are not allowed")
    # check_sysctls.go
    for s in pod_sc.get("sysctls") or []:
        if s.get("name") not in SAFE_SYSCTLS:
            out.append(f"securityContext.sysctls: {s.get('name')!r} is not a safe sysctl")
    # check_seccompProfile_baseline.go, check_seLinuxOptions.go, check_appArmorProfile.go
    out += [f"securityContext.{p}" for p in _baseline_context(pod_sc)]
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and \
                value != "runtime/default" and not value.startswith("localhost/"):
            out.append(f"metadata.annotations[{key}]: AppArmor profile {value!r} not allowed")
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        # check_privileged.go
        if sc.get("privileged"):
            out.append(f"{where}.securityContext.privileged: privileged containers are not "
                       "allowed")
        # check_capabilities_baseline.go
        added = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
        if added:
            out.append(f"{where}.securityContext.capabilities.add: {sorted(added)} not allowed")
        # check_hostPorts.go
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{where}.ports: hostPort is not allowed")
        # check_procMount.go
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}.securityContext.procMount: must be Default")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}.securityContext.windowsOptions.hostProcess: not allowed")
        out += [f"{where}.securityContext.{p}" for p in _baseline_context(sc)]
    return out


def _baseline_context(sc: dict[str, Any]) -> list[str]:
    out = []
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("seccompProfile.type: Unconfined is not allowed")
    selinux = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES:
        out.append(f"seLinuxOptions.type: {selinux.get('type')!r} is not allowed")
    if selinux.get("user") or selinux.get("role"):
        out.append("seLinuxOptions: user and role must not be set")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append("appArmorProfile.type: Unconfined is not allowed")
    return out


def _restricted(spec: dict[str, Any]) -> list[str]:
    out = []
    pod_sc = spec.get("securityContext") or {}
    # check_restrictedVolumes.go
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if kinds and not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volumes[{v.get('name', '?')}]: {sorted(kinds - RESTRICTED_VOLUMES)[0]} "
                       "volumes are not allowed")
    # check_runAsUser.go (pod level)
    if pod_sc.get("runAsUser") == 0:
        out.append("securityContext.runAsUser: must not be 0")
    pod_non_root = pod_sc.get("runAsNonRoot") is True
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type") in SECCOMP_ALLOWED
    # check_allowPrivilegeEscalation.go, check_seccompProfile_restricted.go and
    # check_capabilities_restricted.go (1.25+) allow a pod whose spec.os.name is windows,
    # which may not set those fields at all (core.pods.WINDOWS_REFUSED_POD)
    windows = (spec.get("os") or {}).get("name") == "windows"
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        # check_allowPrivilegeEscalation.go: must be set to false, on every container
        if sc.get("allowPrivilegeEscalation") is not False and not windows:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
        # check_runAsNonRoot.go: true at pod level (and not false here), or true here
        non_root = sc.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            out.append(f"{where}.securityContext.runAsNonRoot: must be true (here or on the "
                       "pod)")
        # check_runAsUser.go
        if sc.get("runAsUser") == 0:
            out.append(f"{where}.securityContext.runAsUser: must not be 0")
        # check_seccompProfile_restricted.go: RuntimeDefault or Localhost, here or on the pod
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not (seccomp in SECCOMP_ALLOWED or (seccomp is None and pod_seccomp) or windows):
            out.append(f"{where}.securityContext.seccompProfile.type: must be RuntimeDefault "
                       "or Localhost (here or on the pod)")
        # check_capabilities_restricted.go
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) and not windows:
            out.append(f"{where}.securityContext.capabilities.drop: must include ALL")
        added = set(caps.get("add") or []) - RESTRICTED_CAPABILITIES
        if added:
            out.append(f"{where}.securityContext.capabilities.add: only NET_BIND_SERVICE, "
                       f"not {sorted(added)}")
    return out


def violations(pod: dict[str, Any], level: Level | str) -> list[str]:
    """The rules of `level` this pod (a manifest, or a bare pod spec) breaks; [] if admitted."""
    level = Level(level)
    if level is Level.PRIVILEGED:
        return []
    spec, meta = _spec_and_meta(pod)
    found = _baseline(spec, meta)
    if level is Level.RESTRICTED:
        found += _restricted(spec)
    return found


def required_level(pod: dict[str, Any]) -> Level:
    """The most restrictive level that admits this pod."""
    for level in ORDER:
        if not violations(pod, level):
            return level
    return Level.PRIVILEGED  # not reached: privileged admits everything


def admits(namespace_level: Level | str | None, pod: dict[str, Any]) -> bool:
    """Whether a namespace enforcing `namespace_level` (None: no label, i.e. privileged)
    admits this pod."""
    return not violations(pod, namespace_level or Level.PRIVILEGED)

"""Every pod template checked against the Kubernetes schema when the config loads, so a typo
in a podSpecPatch (or anything a template makes) is refused with its path, not at pod creation.

The check renders the pod a build of the template would get (at its min size, with a
placeholder secret) and validates it with kubernetes-validate (strict: unknown fields are
refused), then against the security-context rules the schema cannot express, which a patch
that relaxes the hardened defaults easily breaks. An error inside the patch is reported at
the patch's own path."""

import re
from typing import Any

import kubernetes_validate

from workers.config.pod_names import name_rules
from workers.core.cluster import Resources
from workers.core.containers import env_names
from workers.core.models import BuildRequest, PodTemplate
from workers.core.pods import agent_pod_manifest
from workers.core.quantity import QUANTITY, parse_quantity
from workers.core.templates import MERGE_KEYS

# The API version the manifests are checked against (kubernetes-validate bundles 1.25-1.37).
KUBERNETES_SCHEMA_VERSION = "1.30.0"
_UNEXPECTED = re.compile(r"\('([^']+)' was unexpected\)")
Loc = tuple[str | int, ...]
_POD_CONTEXT: Loc = ("spec", "securityContext")


def sample_manifest(name: str, template: PodTemplate) -> dict[str, Any]:
    build = BuildRequest(build_key="0" * 20, agent_name=f"check-{name}"[:63].lower(),
                         source="gitlab", project="group/project", ref="refs/heads/main",
                         sha="0" * 40, user="user", job="job", template=name)
    return agent_pod_manifest(build=build, template=template, namespace="ci-agents",
                              size=Resources(template.cpu.min, template.memory.min),
                              jenkins_url="https://jenkins.invalid")


def _in_patch(manifest: dict[str, Any], patch: Any, path: Loc) -> Loc | None:
    """The path inside the patch of the manifest element at `path` (spec...), or None when
    the element did not come from the patch."""
    node: Any = manifest
    out: list[str | int] = []
    parent = ""
    for i, part in enumerate(path):
        if i == 0:  # "spec": the patch is a PodSpec
            node = node.get(part) if isinstance(node, dict) else None
            parent = str(part)
            continue
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            item, key = node[part], MERGE_KEYS.get(parent, "name")
            node = item
            if not isinstance(patch, list) or not isinstance(item, dict):
                return None
            j = next((j for j, p in enumerate(patch)
                      if isinstance(p, dict) and key in item and p.get(key) == item[key]), None)
            if j is None:
                return None
            out.append(j)
            patch = patch[j]
        elif isinstance(node, dict) and isinstance(patch, dict) and part in patch:
            node, patch = node.get(part), patch[part]
            out.append(part)
            parent = str(part)
        else:
            return None
    return tuple(out)


def _security_rules(manifest: dict[str, Any]) -> list[tuple[Loc, str]]:
    """What the API server or the kubelet refuses in a container's security context, though
    the schema allows it: a pod that could never be created, or never start."""
    spec = manifest["spec"]
    pod_sc = spec.get("securityContext") or {}
    found: list[tuple[Loc, str]] = []
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            sc = c.get("securityContext") or {}
            at: Loc = ("spec", group, i, "securityContext")
            # API validation (pkg/apis/core/validation, ValidateSecurityContext): "cannot set
            # `allowPrivilegeEscalation` to false and `privileged` to true"; pods have false.
            # Likewise an added capability spelled CAP_SYS_ADMIN (string(cap) ==
            # "CAP_SYS_ADMIN"): SYS_ADMIN, as the runtimes also take it, is accepted.
            added = (sc.get("capabilities") or {}).get("add") or []
            if sc.get("allowPrivilegeEscalation") is False and (
                    sc.get("privileged") or "CAP_SYS_ADMIN" in added):
                found.append((at, "privileged (or adding CAP_SYS_ADMIN) needs "
                                  "allowPrivilegeEscalation: true; the API server refuses it "
                                  "with false, which every container has by default"))
            # kubelet (verifyRunAsNonRoot): "container's runAsUser breaks non-root policy",
            # a CreateContainerConfigError at start.
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if non_root and sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                found.append((at, "runAsUser 0 with runAsNonRoot: the kubelet refuses to start "
                                  "it; set runAsNonRoot: false too to run it as root"))
    return found


# What the API server's own validation refuses though the schema allows it: the schema gives
# these fields as plain strings or integers (kubernetes-validate checks no enum values), so a
# typo such as `imagePullPolicy: always` loaded and every build of the template then failed
# at pod creation with a 422. From kubernetes pkg/apis/core/validation/validation.go
# (validatePullPolicy, validateContainerPorts, ValidateVolumeMounts, validateContainers,
# validateDNSPolicy, validateTolerations) and the enum values in pkg/apis/core/types.go.
_ENUMS: dict[str, tuple[str, ...]] = {
    "imagePullPolicy": ("Always", "IfNotPresent", "Never"),
    "terminationMessagePolicy": ("File", "FallbackToLogsOnError"),
}
_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
_DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")


def _one_of(value: Any, allowed: tuple[str, ...]) -> str | None:
    # An empty value is the field left out: the API server's defaulting (pkg/apis/core/v1
    # defaults.go, SetDefaults_Container, _ContainerPort, _PodSpec) fills it before
    # validation, so a chart's `imagePullPolicy: ""` makes a pod.
    if value is None or value == "" or value in allowed:
        return None
    return f"unsupported value {value!r}: one of {', '.join(allowed)}"


# kubernetes pkg/apis/core/validation validatePodDNSConfig: "must provide `dnsConfig` when
# `dnsPolicy` is None", "must provide at least one DNS nameserver when `dnsPolicy` is None",
# and at most MaxDNSNameservers (3) nameservers whatever the policy.
_MAX_NAMESERVERS = 3


def _dns_config(spec: dict[str, Any]) -> list[tuple[Loc, str]]:
    config = spec.get("dnsConfig")
    nameservers = (config or {}).get("nameservers") or []
    if len(nameservers) > _MAX_NAMESERVERS:
        return [(("spec", "dnsConfig", "nameservers"),
                 f"must not have more than {_MAX_NAMESERVERS} nameservers")]
    if spec.get("dnsPolicy") != "None":
        return []
    if config is None:
        return [(("spec", "dnsPolicy"), "dnsPolicy None needs a dnsConfig (the API server "
                                        "refuses the pod without one)")]
    if not nameservers:
        return [(("spec", "dnsConfig"), "dnsPolicy None needs at least one nameserver")]
    return []


def _api_rules(manifest: dict[str, Any], patch: dict[str, Any]) -> list[tuple[Loc, str]]:
    """What the API server refuses (422) in a pod the schema passes: enum values, ports,
    volume mounts naming no volume or one path twice, a container name used twice."""
    spec = manifest["spec"]
    found: list[tuple[Loc, str]] = []
    if bad := _one_of(spec.get("dnsPolicy"), _DNS_POLICIES):
        found.append((("spec", "dnsPolicy"), bad))
    found += _dns_config(spec)
    volumes = {v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)}
    names: dict[str, Loc] = {}  # container name -> where it was first
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            at: Loc = ("spec", group, i)
            if (first := names.setdefault(c.get("name"), at)) != at:
                # named where the patch wrote it, the other being ours (core.pods)
                where = first if patch and _in_patch(manifest, patch, at) is None else at
                found.append((where + ("name",), f"container name {c.get('name')!r} is "
                                                 "used twice (containers and initContainers "
                                                 "share one set of names)"))
            for field, allowed in _ENUMS.items():
                if bad := _one_of(c.get(field), allowed):
                    found.append((at + (field,), bad))
            for j, variable in enumerate(c.get("env") or []):
                try:  # a podSpecPatch's env as the template's (the schema takes any string)
                    env_names({variable["name"]: ""})
                except ValueError as err:
                    found.append((at + ("env", j, "name"), str(err)))
            for j, port in enumerate(c.get("ports") or []):
                number = port.get("containerPort")
                if isinstance(number, int) and not 1 <= number <= 65535:
                    found.append((at + ("ports", j, "containerPort"),
                                  "must be between 1 and 65535, inclusive"))
                if bad := _one_of(port.get("protocol"), _PORT_PROTOCOLS):
                    found.append((at + ("ports", j, "protocol"), bad))
            paths: set[str] = set()
            for j, mount in enumerate(c.get("volumeMounts") or []):
                if mount.get("name") not in volumes:
                    found.append((at + ("volumeMounts", j, "name"),
                                  f"no volume named {mount.get('name')!r} in the pod"))
                if mount.get("mountPath") in paths:
                    found.append((at + ("volumeMounts", j, "mountPath"),
                                  f"{mount.get('mountPath')!r} is mounted twice"))
                paths.add(mount.get("mountPath"))
    return found


def _quantity(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None  # the schema's to refuse
    try:
        if isinstance(value, str) and not QUANTITY.fullmatch(value):  # no space around it either
            raise ValueError(value)
        parse_quantity(value)  # and not negative (ValidateNonnegativeQuantity)
    except ValueError:
        return (f"{value!r} is not a Kubernetes quantity (a number with an optional suffix: "
                "Ki, Mi, Gi, Ti or k, M, G, T, or m for CPU; 10GB is 10G)")
    return None


def _quantity_rules(spec: dict[str, Any]) -> list[tuple[Loc, str]]:
    """The quantities the schema gives as any string or integer, which the API server parses
    when it decodes the pod (k8s.io/apimachinery resource.ParseQuantity: "quantities must
    match the regular expression"; a 400 at every creation): an emptyDir's sizeLimit, an
    ephemeral volume's storage, an init container's (a sidecar's) resources."""
    found: list[tuple[Loc, str]] = []
    for i, volume in enumerate(spec.get("volumes") or []):
        at: Loc = ("spec", "volumes", i)
        if bad := _quantity((volume.get("emptyDir") or {}).get("sizeLimit")):
            found.append((at + ("emptyDir", "sizeLimit"), bad))
        claim = ((volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}).get("spec")
        for kind, amounts in ((claim or {}).get("resources") or {}).items():
            for resource, amount in (amounts or {}).items() if isinstance(amounts, dict) else ():
                if bad := _quantity(amount):
                    found.append((at + ("ephemeral", "volumeClaimTemplate", "spec",
                                        "resources", kind, resource), bad))
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            for kind, amounts in (c.get("resources") or {}).items():
                for resource, amount in (amounts or {}).items() \
                        if isinstance(amounts, dict) else ():
                    if bad := _quantity(amount):
                        found.append((("spec", group, i, "resources", kind, resource), bad))
    return found


def problems(name: str, template: PodTemplate) -> list[tuple[Loc, str]]:
    """(path in the template, reason) for a template whose pod is not a valid Pod."""
    manifest = sample_manifest(name, template)
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        path: Loc = tuple(err.path)
        reason = _reason(err)
        unexpected = _UNEXPECTED.search(reason)
        if unexpected and "Additional properties" in reason:
            path, reason = path + (unexpected.group(1),), "unknown field"
        return [_located(template, manifest, path, reason)]
    out = [_located(template, manifest, path, reason)
           for path, reason in _api_rules(manifest, template.pod_spec_patch)
           + name_rules(manifest["spec"]) + _quantity_rules(manifest["spec"])]
    for path, reason in _security_rules(manifest):
        # A pod-level setting in the patch (runAsUser: 0) is where to look when the
        # container's own context did not come from it.
        if template.pod_spec_patch and _in_patch(manifest, template.pod_spec_patch, path) is None \
                and _in_patch(manifest, template.pod_spec_patch, _POD_CONTEXT) is not None:
            path = _POD_CONTEXT
        out.append(_located(template, manifest, path, reason))
    return list(dict.fromkeys(out))  # a pod-level cause is named once


def _reason(err: kubernetes_validate.ValidationError) -> str:
    """The schema's reason, without the value where jsonschema quotes it for a wrong type
    ("31415926535 is not of type 'string'"): an env value YAML read as a number (an unquoted
    numeric token) went whole into check-config's output and the refusing process's log."""
    if err.validator != "type":
        return err.message
    expected = err.validator_value if isinstance(err.validator_value, list) \
        else [err.validator_value]
    return (f"{_KINDS.get(type(err.instance), 'a value')} is not of type "
            f"{' or '.join(repr(e) for e in expected)}")


# What a YAML value was read as, named in place of the value (_reason).
_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
          list: "a list", dict: "a mapping", type(None): "null"}


def _located(template: PodTemplate, manifest: dict[str, Any], path: Loc, reason: str
             ) -> tuple[Loc, str]:
    """The problem at `path` of the pod, reported inside the patch when it came from there."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    if path[:1] == ("spec",) and template.pod_spec_patch:
        inner = _in_patch(manifest, template.pod_spec_patch, path)
        if inner is not None:
            return (("podSpecPatch",) + inner,
                    f"{reason} (Kubernetes {KUBERNETES_SCHEMA_VERSION} Pod at {where})")
    return ((), f"the pod it makes is not a valid Kubernetes {KUBERNETES_SCHEMA_VERSION} "
                f"Pod: {where}: {reason}")

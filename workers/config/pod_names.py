"""The names, labels, paths and modes in a template's pod that the API server refuses (422)
though the schema takes any string or integer there: a volume named `mavenCache`, a service
port named `postgres-primary`, a `nodeSelector` value with a space, a container without an
image. Loaded, every build of the template failed at pod creation. Also an image the kubelet
cannot parse (`Maven:3.9`), which the API server takes: every pod then fails to start. From kubernetes
pkg/apis/core/validation/validation.go (ValidatePodSpec, validateVolumes,
validateContainerPorts, validateEnv, validateContainerCommon, validateContainerOnlyForPod,
ValidateVolumeMounts' validateLocalDescendingPath, validateTolerations,
ValidateServiceAccountName, ValidateRuntimeClassName,
validateSecretVolumeSource/validateConfigMapVolumeSource) and
k8s.io/apimachinery/pkg/util/validation (IsDNS1123Label, IsDNS1123Subdomain,
IsValidPortName). Pure."""

import re
from typing import Any

from workers.core.node_affinity import label_key_problem, label_value_ok

Loc = tuple[str | int, ...]
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# IsValidPortName: at most 15 characters (IANA_SVC_NAME), lower-case letters, digits and '-',
# at least one letter, no '-' at either end nor two in a row
_PORT_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_MAX_MODE = 0o777  # "must be a number between 0 and 0777 (octal), both inclusive"
# A docker image reference, as the kubelet parses every container's image before it pulls
# (distribution/reference's ParseNormalizedNamed in kubelet's applyDefaultImageTag; its
# grammar in regexp.go): [host[:port]/]path[:tag][@digest], the path's components lower-case
# letters and digits joined by '.', '_', '__' or dashes; the host any case, or [IPv6]. One it
# cannot parse leaves the pod Pending as InvalidImageName: every build of the template fails.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = (r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
         r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])")
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST}(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@(?P<algorithm>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*)"
    r":(?P<hex>[0-9a-fA-F]{32,}))?", re.ASCII)  # Go's \w: [0-9A-Za-z_]
# RepositoryNameTotalLengthMax: the path alone (reference.go Parse), as normalized
# (normalize.go splitDockerDomain: `maven` is docker.io's library/maven)
_IMAGE_PATH_MAX = 255
# go-digest's algorithms (algorithm.go): lower-case hex of exactly the hash's length; any
# other algorithm is ErrDigestUnsupported
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")  # ParseNormalizedNamed: "cannot specify 64-byte hex"


def _image_path(name: str) -> str:
    """The repository path of a parsed name, as splitDockerDomain (normalize.go) splits it."""
    first, slash, rest = name.partition("/")
    hub = True
    if slash and (first == "localhost" or any(c in first for c in ".:") or first != first.lower()):
        hub, name = first in ("docker.io", "index.docker.io"), rest
    return "library/" + name if hub and "/" not in name else name


def _image_reference(image: str) -> str | None:
    found = _IMAGE_REFERENCE.fullmatch(image)
    if found and len(_image_path(found["name"])) <= _IMAGE_PATH_MAX \
            and not _IDENTIFIER.fullmatch(image) and (
                found["hex"] is None or (_DIGEST_HEX.get(found["algorithm"]) == len(found["hex"])
                                         and found["hex"] == found["hex"].lower())):
        return None
    return (f"{image!r} is not an image reference the kubelet can parse (InvalidImageName: "
            "every pod of the template would fail to start): [registry/]path[:tag][@digest], "
            "the path in lower-case letters, digits and '.', '_', '-', a digest sha256: and "
            "64 lower-case hex digits")


def _dns_label(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 63 and _DNS_LABEL.fullmatch(value):
        return None
    return f"{value!r} is not a DNS label (lower-case letters, digits, '-'; at most 63)"


def _port_name(value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= 15 and _PORT_NAME.fullmatch(value) \
            and re.search("[a-z]", value):
        return None
    return (f"{value!r} is not a port name (at most 15 lower-case letters, digits and '-', "
            "with at least one letter, no '-' at either end or twice in a row)")


def _mode(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or 0 <= value <= _MAX_MODE:
        return None  # a wrong type is the schema's to refuse
    return "must be a number between 0 and 0777 (octal), both inclusive"


def name_rules(spec: dict[str, Any]) -> list[tuple[Loc, str]]:
    """(path in the pod, reason) for each name, label or mode the API server refuses."""
    found: list[tuple[Loc, str]] = []
    for field in ("hostname", "subdomain"):
        if spec.get(field) and (bad := _dns_label(spec[field])):
            found.append((("spec", field), bad))
    for field in ("serviceAccountName", "runtimeClassName"):
        name = spec.get(field)
        if name and not (isinstance(name, str) and len(name) <= 253
                         and _DNS_SUBDOMAIN.fullmatch(name)):
            found.append((("spec", field), f"{name!r} is not a DNS subdomain (lower-case "
                                           "letters, digits, '-', '.')"))
    for i, toleration in enumerate(spec.get("tolerations") or []):
        key, value = toleration.get("key"), toleration.get("value")
        if key and (bad := label_key_problem(str(key))):
            found.append((("spec", "tolerations", i, "key"), f"label key {key!r}: {bad}"))
        if toleration.get("operator") in (None, "", "Equal") and value \
                and not (isinstance(value, str) and label_value_ok(value)):
            found.append((("spec", "tolerations", i, "value"),
                          f"{value!r} is not a label value"))
    for key, value in (spec.get("nodeSelector") or {}).items():
        # ValidatePodSpec: unversionedvalidation.ValidateLabels(spec.NodeSelector, ...)
        if bad := label_key_problem(str(key)):
            found.append((("spec", "nodeSelector", key), f"label key {key!r}: {bad}"))
        elif not (isinstance(value, str) and label_value_ok(value)):
            found.append((("spec", "nodeSelector", key),
                          f"{value!r} is not a label value (at most 63 letters, digits, '-', "
                          "'_' or '.', beginning and ending with a letter or digit)"))
    for i, volume in enumerate(spec.get("volumes") or []):
        at: Loc = ("spec", "volumes", i)
        if bad := _dns_label(volume.get("name")):
            found.append((at + ("name",), bad))
        for source in ("configMap", "secret"):
            if bad := _mode((volume.get(source) or {}).get("defaultMode")):
                found.append((at + (source, "defaultMode"), bad))
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            at = ("spec", group, i)
            image = c.get("image")
            if not image:
                found.append((at + ("image",), "required: every container needs an image"))
            elif isinstance(image, str) and image != image.strip():
                found.append((at + ("image",), "must not have leading or trailing whitespace"))
            elif isinstance(image, str) and (bad := _image_reference(image)):
                found.append((at + ("image",), bad))
            for j, mount in enumerate(c.get("volumeMounts") or []):
                for field in ("subPath", "subPathExpr"):  # validateLocalDescendingPath
                    sub = mount.get(field)
                    if isinstance(sub, str) and (sub.startswith("/") or ".." in sub.split("/")):
                        found.append((at + ("volumeMounts", j, field),
                                      "must be a relative path without '..'"))
                if mount.get("subPath") and mount.get("subPathExpr"):
                    # ValidateVolumeMounts; a child's subPathExpr merged over its parent's
                    # subPath on the same mountPath keeps both
                    found.append((at + ("volumeMounts", j, "subPathExpr"),
                                  "subPathExpr and subPath are mutually exclusive"))
            port_names: set[str] = set()
            for j, port in enumerate(c.get("ports") or []):
                if port.get("name") and (bad := _port_name(port["name"])):
                    found.append((at + ("ports", j, "name"), bad))
                elif port.get("name") and port["name"] in port_names:
                    # validateContainerPorts: Duplicate, of a name given (len(port.Name) > 0)
                    found.append((at + ("ports", j, "name"),
                                  f"port name {port['name']!r} is used twice in the container"))
                if port.get("name"):
                    port_names.add(port["name"])
            for j, env in enumerate(c.get("env") or []):
                # validateEnvVarValueFrom: "may not be specified when `value` is not empty"
                if env.get("value") and env.get("valueFrom") is not None:
                    found.append((at + ("env", j, "valueFrom"),
                                  "may not be given with a value (one or the other)"))
    return found

"""Which installation a pod belongs to: its installation label and annotation, and whose a pod
of ours is. Pure.

Several installations may share one agent namespace (two releases in one namespace, or two
pointed at the same one). Every pod an installation with an identity (settings
`installation`) makes carries INSTALLATION_LABEL, a label value derived from the identity
(`label_value`), and the identity itself in INSTALLATION_ANNOTATION. Lists ask the server for
that label (`selectors`), and the code checks label and annotation again (`owner`): two
identities may share a label value ("prod/ci" and "prod.ci"), never an annotation.
An installation without an identity makes pods without them and leaves alone every pod that
has one. A pod of ours without the label, made by a version before it, is LEGACY to an
installation with an identity: its own only when its state knows the pod's name
(workers.adapters.legacy_pods), as workers.engine.repairs does for the Jenkins nodes of before.
"""

import hashlib
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

INSTALLATION_LABEL = "ci-autoscaler.io/installation"
INSTALLATION_ANNOTATION = "ci-autoscaler.io/installation"
# A label value: at most 63 characters of [A-Za-z0-9._-], beginning and ending with a letter
# or digit (Kubernetes docs, "Labels and Selectors", Syntax and character set).
_LABEL_MAX = 63
_HASH_CHARS = 8
_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9._-]")


class Owner(StrEnum):
    OURS = "ours"
    LEGACY = "legacy"  # ours from before installation labels, or another's of then
    OTHER = "other"  # another installation's


@lru_cache(64)
def label_value(installation: str) -> str:
    """The identity as a label value a person reads: "prod/ci-autoscaler" gives
    "prod.ci-autoscaler"; one too long is cut and ends in a hash of the whole identity.
    "" for no identity. (settings `installation` begins and ends with a letter or digit.)"""
    if not installation:
        return ""
    readable = _NOT_IN_LABEL.sub(".", installation)
    if len(readable) <= _LABEL_MAX:
        return readable
    digest = hashlib.sha256(installation.encode()).hexdigest()[:_HASH_CHARS]
    return f"{readable[:_LABEL_MAX - 1 - _HASH_CHARS].rstrip('._-')}-{digest}"


def stamp(metadata: dict[str, Any], installation: str) -> dict[str, Any]:
    """A pod's metadata with this installation's label and annotation (none without one)."""
    if installation:
        metadata.setdefault("labels", {})[INSTALLATION_LABEL] = label_value(installation)
        metadata.setdefault("annotations", {})[INSTALLATION_ANNOTATION] = installation
    return metadata


def owner(labels: Mapping[str, str] | None, annotations: Mapping[str, str] | None,
          installation: str) -> Owner:
    """Whose a pod with our managed-by value is (the caller checks that value).
    `annotations` None: not known (metrics.k8s.io's PodMetrics copy a pod's labels only),
    so the label alone decides."""
    value = (labels or {}).get(INSTALLATION_LABEL)
    if value is None:
        return Owner.LEGACY if installation else Owner.OURS
    if installation and value == label_value(installation) and (
            annotations is None
            or annotations.get(INSTALLATION_ANNOTATION) == installation):
        return Owner.OURS
    return Owner.OTHER


def selectors(managed_by: str, installation: str) -> tuple[str, str | None]:
    """Label selectors for a list: (this installation's pods, the legacy ones or None);
    `managed_by` is the selector of our managed-by value."""
    if not installation:
        return f"{managed_by},!{INSTALLATION_LABEL}", None
    return (f"{managed_by},{INSTALLATION_LABEL}={label_value(installation)}",
            f"{managed_by},!{INSTALLATION_LABEL}")


# Pods of before are looked for until none was found for this long: by then the upgrade's
# rollout is over (no process of a version before makes one) and their builds have ended or
# are known by name (a release, a retention, reads and deletes its pod by name: found).
LEGACY_QUIET_SECONDS = 3600.0


class LegacyLookout:
    """Whether a list should still look for pods from before installation labels (a second
    list request each time): from the start of a process until LEGACY_QUIET_SECONDS passed
    without one of its own found (another's, unknown to its state, never end the wait: one
    without an identity beside it makes them for good). Always False without an identity
    (they are its own then)."""

    def __init__(self, installation: str, quiet_seconds: float = LEGACY_QUIET_SECONDS):
        self._on = bool(installation)
        self._quiet = quiet_seconds
        self._none_since: float | None = None

    def wanted(self) -> bool:
        return self._on

    def found(self, count: int, now: float) -> None:
        """What a list for them found (`count` pods of its own: known to its state), at
        `now`."""
        if count:
            self._none_since = None
        elif self._none_since is None:
            self._none_since = now
        elif now - self._none_since >= self._quiet:
            self._on = False

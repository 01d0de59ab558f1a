"""Claims that pods of a template may need on several nodes at once. A ReadWriteOnce volume
attaches to one node at a time: a second pod on another node waits in ContainerCreating with
a Multi-Attach event, and is not Unschedulable, so nothing re-places it (REALITY.md).

The claim's access mode lives in the cluster, out of an offline check's reach: a template may
declare it (`accessMode`), and a claim without one is taken as ReadWriteOnce, the default of
most storage classes. Pure: templates in, findings with their reason out."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.models import PodTemplate
from workers.core.pods import HOSTNAME_LABEL
from workers.core.volumes import CLAIM_SOURCE, AccessMode

SHAREABLE = frozenset({AccessMode.READ_WRITE_MANY, AccessMode.READ_ONLY_MANY})
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SharedClaim:
    """A claim that more pods may use at once than its access mode lets attach: where it is
    first used (a path in the file), and why."""

    claim: str
    loc: Loc
    reason: str


def _claims(name: str, t: PodTemplate) -> list[tuple[str, AccessMode | None, Loc]]:
    """(claim name, declared access mode, path in the file) of every claim a template mounts,
    its podSpecPatch's volumes included."""
    found: list[tuple[str, AccessMode | None, Loc]] = []
    source = t.workspace_source.get(CLAIM_SOURCE)
    if isinstance(source, Mapping) and source.get("claimName"):
        found.append((source["claimName"], t.workspace_access_mode,
                      ("templates", name, "workspaceVolume")))
    for i, v in enumerate(t.volumes):
        source = v.source.get(CLAIM_SOURCE)
        if isinstance(source, Mapping) and source.get("claimName"):
            found.append((source["claimName"], v.access_mode, ("templates", name, "volumes", i)))
    for i, v in enumerate(t.pod_spec_patch.get("volumes") or []):
        source = v.get(CLAIM_SOURCE) if isinstance(v, Mapping) else None
        if isinstance(source, Mapping) and source.get("claimName"):
            found.append((source["claimName"], None,
                          ("templates", name, "podSpecPatch", "volumes", i)))
    return found


def pinned_host(t: PodTemplate) -> str | None:
    """The one node every pod of the template goes to, if its nodeSelector or podSpecPatch
    names one (kubernetes.io/hostname, or nodeName)."""
    patch: Mapping[str, Any] = t.pod_spec_patch
    selector = {**t.node_selector, **(patch.get("nodeSelector") or {})}
    host = patch.get("nodeName") or selector.get(HOSTNAME_LABEL)
    return host if isinstance(host, str) and host else None


def _most_at_once(templates: list[PodTemplate], max_agents: int | None) -> int | None:
    """How many pods of these templates may run at once (None: no bound)."""
    caps = [t.max_concurrent for t in templates]
    total = None if None in caps else sum(c for c in caps if c is not None)
    if max_agents is not None:
        total = max_agents if total is None else min(total, max_agents)
    return total


def shared_claims(templates: Mapping[str, PodTemplate], max_agents: int | None
                  ) -> list[SharedClaim]:
    """Every claim that is not declared ReadWriteMany or ReadOnlyMany and that more pods may
    need at once than it can serve: on several nodes (ReadWriteOnce), or at all
    (ReadWriteOncePod)."""
    uses: dict[str, list[tuple[str, AccessMode | None, Loc]]] = {}
    for name, t in templates.items():
        for claim, mode, loc in _claims(name, t):
            uses.setdefault(claim, []).append((name, mode, loc))
    found = []
    for claim, where in uses.items():
        modes = {mode for _, mode, _ in where if mode is not None}
        if modes & SHAREABLE:
            continue
        names = list(dict.fromkeys(name for name, _, _ in where))
        users = [templates[n] for n in names]
        at_once = _most_at_once(users, max_agents)
        if at_once is not None and at_once <= 1:
            continue
        hosts = {pinned_host(t) for t in users}
        one_node = len(hosts) == 1 and None not in hosts
        how_many = "any number of" if at_once is None else f"up to {at_once}"
        which = f"template {names[0]}" if len(names) == 1 else \
            f"templates {', '.join(names)}"
        if AccessMode.READ_WRITE_ONCE_POD in modes:
            reason = (f"claim {claim!r} is ReadWriteOncePod and {how_many} pods of {which} may "
                      "use it at once: every pod but one waits in ContainerCreating")
        elif one_node:
            continue
        else:
            taken = "is ReadWriteOnce" if modes else \
                "is taken as ReadWriteOnce (no accessMode given)"
            reason = (f"claim {claim!r} {taken} and {how_many} pods of {which} may run at once "
                      "on different nodes: it attaches to one node at a time, so pods on "
                      "other nodes hang in ContainerCreating (Multi-Attach)")
        found.append(SharedClaim(claim, where[0][2], reason + (
            ". Use a ReadWriteMany claim (and say so: accessMode: ReadWriteMany), a per-build "
            "volume (ephemeral: {volumeClaimTemplate: ...}), or maxConcurrent: 1")))
    return found

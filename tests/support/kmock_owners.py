"""Ownership as the API server and its garbage collector handle it, which kmock's emulator
leaves out: a uid for every object created, ownerReferences merged by uid in a strategic merge
patch, and a garbage collector that deletes an object whose owners are all gone.

kmock fills in no uid, so code that makes a pod the owner of another object (an agent's Secret:
workers.adapters.kube_secrets) never did so in tests; and kmock applies every PATCH as a JSON
merge patch, which replaces a list whole, where the API server merges a strategic merge patch's
ownerReferences by uid: a patch adding an owner keeps the owners already there. Both are kinder
than the real server, so both are played here (uids only when a test asks: `assign_uids`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import kmock

# What the official client sends for a PATCH whose body is a dict (kubernetes/client/rest.py).
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server's handling of ownership (module docstring)."""

    # The API server sets metadata.uid on every object it creates (apimachinery
    # pkg/registry/rest/create.go FillObjectMetaSystemFields).
    assign_uids = False
    # (action, resource): the garbage collector runs just before each such request is
    # handled (a collector that is late, and comes at that moment), e.g. a pod's create, when
    # a provision is between making the pod's Secret and owning it by the pod.
    collect_before: frozenset[tuple[kmock.action, kmock.resource]] = frozenset()
    # (action, resource, fn): fn() runs once, just before the next such request is handled
    # (what another actor does at that moment); set on the server's loop (KubeServer.before_next).
    run_before: tuple[tuple[kmock.action, kmock.resource, Any], ...] = ()

    async def _handle(self, request: Any) -> Any:
        data = request.data
        hook = next((h for h in self.run_before if request.resource is not None
                     and request.action == h[0] and request.resource == h[1]), None)
        if hook is not None:
            self.run_before = tuple(h for h in self.run_before if h is not hook)
            hook[2]()
        if request.resource is not None and any(
                request.action == action and request.resource == resource
                for action, resource in self.collect_before):
            await self.collect_garbage()
        if request.resource is not None and isinstance(data, dict):
            if request.action == kmock.action.CREATE:
                if self.assign_uids:
                    data.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
            elif request.action == kmock.action.UPDATE and request.name is not None \
                    and _content_type(request.headers) == STRATEGIC_MERGE:
                self._merge_owners(request, data)
        return await super()._handle(request)

    def _merge_owners(self, request: Any, data: dict[str, Any]) -> None:
        """The patch's ownerReferences made the whole merged list, so that kmock's JSON merge
        (which replaces a list) stores what the API server would."""
        refs = (data.get("metadata") or {}).get("ownerReferences")
        key = (request.resource, request.namespace, request.name)
        if not isinstance(refs, list) or key not in self.objects or self.objects[key].deleted:
            return
        stored = (self.objects[key].raw.get("metadata") or {}).get("ownerReferences") or []
        data["metadata"]["ownerReferences"] = merge_by_uid(stored, refs)

    async def collect_garbage(self) -> list[tuple[Any, str | None, str]]:
        """The garbage collector's pass: every object with owners, none of which exists any
        more, is deleted (watchers get DELETED); one with a live owner left is kept
        (https://kubernetes.io/docs/concepts/architecture/garbage-collection/; kube-controller-
        manager pkg/controller/garbagecollector attemptToDeleteItem: no solid owner, deleted).
        An object with no ownerReferences is never collected. The keys deleted."""
        gone = []
        async with self._lock:
            live = {(obj.raw.get("metadata") or {}).get("uid")
                    for obj in self.objects.values() if not obj.deleted}
            for key, obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                if not refs or any(r.get("uid") in live for r in refs):
                    continue
                raw = obj.raw
                obj.delete()
                await self._buses[key[0]].put({"type": "DELETED", "object": raw})
                gone.append(key)
        return gone


def merge_by_uid(stored: list[dict[str, Any]], patch: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    """A strategic merge patch's ownerReferences applied to the stored ones: ObjectMeta declares
    the list `patchStrategy:"merge" patchMergeKey:"uid"` (apimachinery pkg/apis/meta/v1/
    types.go), so an entry replaces the stored one of its uid or is added, an entry with
    `$patch: delete` takes the one of its uid off, and a `{"$patch": "replace"}` entry makes
    the list the patch's other entries (apimachinery pkg/util/strategicpatch, the "$patch"
    directives). Stored entries keep their order, new ones follow."""
    if any(p.get("$patch") == "replace" for p in patch):
        return [dict(p) for p in patch if "$patch" not in p]
    merged = [dict(r) for r in stored]
    for entry in patch:
        at = next((i for i, r in enumerate(merged) if r.get("uid") == entry.get("uid")), None)
        if entry.get("$patch") == "delete":
            if at is not None:
                del merged[at]
        elif at is None:
            merged.append(dict(entry))
        else:
            merged[at] = {**merged[at], **entry}
    return merged


def _content_type(headers: Mapping[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return value.split(";")[0].strip().lower()

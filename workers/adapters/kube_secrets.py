"""Each agent's own Secret (its JENKINS_SECRET, workers.core.pods.agent_secret_manifest): made
before its pod, owned by the pod once the pod exists, and deleted with it.

The owner reference lets the API server's garbage collector delete the Secret when the pod
goes, even if we never get to it; the pod's uid comes from the API server, so it is set right
after the pod is created. One found under a pod made again under the same name loses its old
pod owners as it is updated (`put`): left to them, the collector would delete it under the new
pod. The Secret is also deleted explicitly with the pod (delete_pod) and at release: the
garbage collector may be late (the tests play it only where they ask). Secrets that are not
ours (no managed-by label, or another installation's: the `mine` of the cluster adapter) are
never replaced or deleted.
"""

from collections.abc import Callable
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from workers.core.errors import PermanentError, RetryableError
from workers.core.pods import agent_secret_name

Call = Callable[..., Any]  # KubeCluster._call: (what, fn, *args, let_through=..., **kwargs)
# KubeCluster._mine: whether an object's metadata (the client's model) is this installation's,
# for the agent (pod name) it belongs to
Mine = Callable[[Any, str], bool]


def put(call: Call, api: CoreV1Api, namespace: str, manifest: dict[str, Any], pod: str,
        mine: Mine) -> None:
    """Create the Secret, or replace our own of that name (a retried provision: the agent's
    Jenkins secret is the same); PermanentError if one of that name is not ours."""
    name = manifest["metadata"]["name"]
    what = f"secret {namespace}/{name}"
    # Twice at most: a Secret found is deleted by the garbage collector when the old pod that
    # owns it has just gone (404 on the read or the update), and is then made anew.
    for _ in range(2):
        try:
            call(f"{what}: create", api.create_namespaced_secret, namespace, manifest,
                 let_through=409)
            return
        except ApiException:  # 409: it exists
            pass
        try:
            existing = call(f"{what}: read", api.read_namespaced_secret, name, namespace,
                            let_through=404)
            if not mine(existing.metadata, pod):
                raise PermanentError(f"{what}: exists and is not managed by this installation "
                                     "of ci-autoscaler")
            call(f"{what}: update", api.patch_namespaced_secret, name, namespace,
                 _update(manifest, existing.metadata), let_through=404)
            return
        except ApiException:  # 404: deleted since the create's 409
            pass
    raise RetryableError(f"{what}: deleted each time after it was found")


def _update(manifest: dict[str, Any], meta: Any) -> dict[str, Any]:
    """The patch that makes our Secret found under the pod's name (`meta`: its metadata, the
    client's model) the manifest's.

    A patch of its data, labels and annotations, not a PUT: the same effect on our own
    Secret, and what every API server (and kmock, which answers a PUT 404) takes. The
    annotations too: one from before installation labels gets the label and must get the
    identity beside it, or it is another's from then on (core.installation_pods.owner).

    Its pod owners go in the same patch: found here, it is a pod made again under the same
    name (a retried provision, a stalled build restarted, a lost warm agent placed again),
    still owned by the pod before. Once that pod is gone, the garbage collector deletes a
    dependent whose owners are all gone, the new pod's included: it never starts
    (CreateContainerConfigError). Ownerless, the Secret is kept until `own` sets the new
    pod. A strategic merge patch (what the client sends for a dict) merges ownerReferences by
    uid: `$patch: delete` takes one off; a plain entry would be added beside the old ones."""
    metadata = {"labels": manifest["metadata"].get("labels") or {},
                "annotations": manifest["metadata"].get("annotations") or {}}
    if gone := _pod_owners(meta):
        metadata["ownerReferences"] = [{"$patch": "delete", "uid": uid} for uid in gone]
    return {"metadata": metadata, "stringData": manifest.get("stringData") or {}}


def _pod_owners(meta: Any) -> list[str]:
    """The uids of the pods that own a Secret (its metadata, the client's model)."""
    return [ref.uid for ref in meta.owner_references or []
            if ref.kind == "Pod" and ref.api_version == "v1" and ref.uid]


def own(call: Call, api: CoreV1Api, namespace: str, pod: str, uid: str | None) -> None:
    """Make the pod the Secret's owner (deleted with it by the garbage collector); nothing
    when the server gave the pod no uid."""
    if not uid:
        return
    call(f"secret {namespace}/{agent_secret_name(pod)}: own", api.patch_namespaced_secret,
         agent_secret_name(pod), namespace, {"metadata": {"ownerReferences": [{
             "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}]}})


def delete(call: Call, api: CoreV1Api, namespace: str, pod: str, mine: Mine) -> bool:
    """Delete the agent's Secret if it is ours; False if there is none."""
    name = agent_secret_name(pod)
    what = f"secret {namespace}/{name}"
    try:
        existing = call(f"{what}: read", api.read_namespaced_secret, name, namespace,
                        let_through=404)
    except ApiException:
        return False
    if not mine(existing.metadata, pod):
        return False
    try:
        call(f"{what}: delete", api.delete_namespaced_secret, name, namespace,
             let_through=404)
    except ApiException:
        return False
    return True

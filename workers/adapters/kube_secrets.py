"""Each agent's own Secret (its JENKINS_SECRET, workers.core.pods.agent_secret_manifest): made
before its pod, owned by the pod once the pod exists, and deleted with it.

The owner reference lets the API server's garbage collector delete the Secret when the pod
goes, even if we never get to it; the pod's uid comes from the API server, so it is set right
after the pod is created. The Secret is also deleted explicitly with the pod (delete_pod) and at
release: the garbage collector may be late, and test servers (kmock) have none. Secrets that are
not ours (no managed-by label, or another installation's: the `mine` of the cluster adapter)
are never replaced or deleted.
"""

from collections.abc import Callable
from typing import Any

from kubernetes.client import CoreV1Api
from kubernetes.client.exceptions import ApiException

from workers.core.errors import PermanentError
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
    try:
        call(f"{what}: create", api.create_namespaced_secret, namespace, manifest,
             let_through=409)
        return
    except ApiException:  # 409: it exists
        pass
    existing = call(f"{what}: read", api.read_namespaced_secret, name, namespace)
    if not mine(existing.metadata, pod):
        raise PermanentError(f"{what}: exists and is not managed by this installation of "
                             "ci-autoscaler")
    # A patch of its data, labels and annotations, not a PUT: the same effect on our own
    # Secret, and what every API server (and kmock, which answers a PUT 404) takes. The
    # annotations too: one from before installation labels gets the label and must get the
    # identity beside it, or it is another's from then on (core.installation_pods.owner).
    call(f"{what}: update", api.patch_namespaced_secret, name, namespace,
         {"metadata": {"labels": manifest["metadata"].get("labels") or {},
                       "annotations": manifest["metadata"].get("annotations") or {}},
          "stringData": manifest.get("stringData") or {}})


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

"""A required pod anti-affinity per node ("one heavy build per node"), counted as kube-scheduler
counts it, so that placement and nodes_needed know which nodes such a pod may not go to.

kube-scheduler's InterPodAffinity filter refuses a node holding a pod that a required
podAntiAffinity term of the incoming pod selects, in the term's topology domain (with
topologyKey kubernetes.io/hostname: the node itself), and one whose pods' own terms select
the incoming pod (Kubernetes docs, "Assigning Pods to Nodes", "Inter-pod affinity and
anti-affinity"; pkg/scheduler/framework/plugins/interpodaffinity/filtering.go). Counted here:
a term with topologyKey kubernetes.io/hostname, a labelSelector and neither namespaces nor a
namespaceSelector (so: the pod's own namespace) that selects the pod it is on and no pod of
another template (it asks for the pod's own template label; core.pods). Such a term is a
token the pod holds on its node and that no other pod with the same term may find there, a
pseudo host port (core.fit: the same conflict rule, the same reservations across
workers); the wait reason is POD_ANTI_AFFINITY. Pods of the term that it does not select
(other apps) stay kube-scheduler's to judge among the candidates. A term selecting other
templates' pods too (app.kubernetes.io/managed-by alone, an empty selector) is not a token:
a light pod without the term holds none, yet kube-scheduler keeps the heavy pod off its
node and it off the heavy pod's; counted, the heavy build was placed beside light ones and
the config check held its warning back. Pure."""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# core.pods.TEMPLATE_LABEL, which every pod of a template carries (core.pods imports this
# module by way of core.cluster and core.fit: not imported from there)
TEMPLATE_LABEL = "ci-autoscaler.io/template"

HOSTNAME = "kubernetes.io/hostname"
PREFIX = "podAntiAffinity-"  # the protocol of the pseudo host port (no '/' nor ';')
POD_ANTI_AFFINITY = "pod_anti_affinity"  # the wait reason


def is_token(protocol: str) -> bool:
    return protocol.startswith(PREFIX)


def _terms(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The spec's required podAntiAffinity terms counted here (see the module's text)."""
    affinity = spec.get("affinity")
    anti = affinity.get("podAntiAffinity") if isinstance(affinity, Mapping) else None
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") \
        if isinstance(anti, Mapping) else None
    if not isinstance(terms, list):
        return []
    return [t for t in terms if isinstance(t, Mapping) and t.get("topologyKey") == HOSTNAME
            and isinstance(t.get("labelSelector"), Mapping) and not t.get("namespaces")
            and t.get("namespaceSelector") is None and not t.get("matchLabelKeys")
            and not t.get("mismatchLabelKeys")]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelectorAsSelector(selector).Matches(labels): every matchLabels pair and
    every matchExpressions requirement (In, NotIn, Exists, DoesNotExist); an empty selector
    selects every pod. One it cannot read selects none."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for req in selector.get("matchExpressions") or []:
        if not isinstance(req, Mapping):
            return False
        key, op, values = req.get("key"), req.get("operator"), req.get("values") or []
        have = labels.get(key) if isinstance(key, str) else None
        if op == "In" and not (have is not None and have in values):
            return False
        if op == "NotIn" and have is not None and have in values:
            return False
        if op == "Exists" and have is None or op == "DoesNotExist" and have is not None:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _own_template(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """The selector selects the pod and pods of its template only: it asks for the pod's own
    template label, by matchLabels or an In of that one value."""
    name = labels.get(TEMPLATE_LABEL)
    if name is None or not selects(selector, labels):
        return False
    return (selector.get("matchLabels") or {}).get(TEMPLATE_LABEL) == name or any(
        isinstance(req, Mapping) and req.get("key") == TEMPLATE_LABEL
        and req.get("operator") == "In" and req.get("values") == [name]
        for req in selector.get("matchExpressions") or [])


def counts_all(spec: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Every required podAntiAffinity term of the spec is one counted here (one per node,
    selecting the pod itself): placement keeps to it as kube-scheduler does."""
    anti = ((spec.get("affinity") or {}).get("podAntiAffinity") or {})
    terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    counted = [t for t in _terms(spec) if _own_template(t["labelSelector"], labels)]
    return bool(terms) and len(counted) == len(terms)


def tokens(spec: Mapping[str, Any], labels: Mapping[str, str]) -> frozenset[tuple[str, str, int]]:
    """The pseudo host ports (protocol, "", 0) of a pod with this spec and these labels: one
    per counted term that selects the pod itself and its template's pods only."""
    out = set()
    for term in _terms(spec):
        if _own_template(term["labelSelector"], labels):
            digest = hashlib.sha256(json.dumps(term["labelSelector"], sort_keys=True)
                                    .encode()).hexdigest()[:16]
            out.add((PREFIX + digest, "", 0))
    return frozenset(out)

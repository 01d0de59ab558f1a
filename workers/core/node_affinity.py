"""Required node affinity, read as kube-scheduler reads it: which nodes nodeSelectorTerms let
a pod (or a bound volume) go to, what the API server refuses in them, and the agent pod's
affinity when a template's podSpecPatch has one of its own (its terms, each with our
candidate hostnames added, so the pod goes only where placement counted it). Pure: no I/O;
a node is anything with `name` and `labels`."""

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

Terms = Sequence[Mapping[str, Any]]  # nodeSelectorTerms, as in a pod or a PersistentVolume

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
# strconv.ParseInt(s, 10, 64): an optional sign and decimal digits, nothing else
_INT64 = re.compile(r"[+-]?[0-9]+")
# k8s.io/apimachinery/pkg/util/validation: IsValidLabelValue (at most 63), the name part of
# IsQualifiedName (1 to 63), IsDNS1123Subdomain (at most 253: a key's prefix, a node's name)
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def label_key_problem(key: str) -> str | None:
    """What validation.IsQualifiedName refuses in a label key (the API server's
    ValidateLabelName, and labels.NewRequirement's validateLabelKey)."""
    prefix, _, name = key.rpartition("/") if "/" in key else ("", "", key)
    if "/" in key and (not prefix or "/" in prefix or len(prefix) > 253
                       or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "its prefix must be a DNS subdomain (lower-case letters, digits, '-', '.')"
    if not name or len(name) > 63 or not _LABEL_VALUE.fullmatch(name):
        return ("its name must be 1-63 letters, digits, '-', '_' or '.', beginning and "
                "ending with a letter or digit")
    return None


def label_value_ok(value: str) -> bool:
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def _unparsed(key: str, op: str, values: tuple[str, ...], field: bool) -> str | None:
    """Why kube-scheduler cannot parse this requirement (k8s.io/component-helpers nodeaffinity:
    labels.NewRequirement for matchExpressions, nodeSelectorRequirementsAsFieldSelector for
    matchFields), or None. A term holding one matches no node (LazyErrorNodeSelector); a
    preferred term holding one fails the pod's scoring (NodeAffinity PreScore) altogether."""
    if field:
        if op not in ("In", "NotIn") or len(values) != 1:
            return "matchFields takes operator In or NotIn with exactly one value"
        return None
    if label_key_problem(key):
        return "key"
    if op not in _OPERATORS:
        return "operator"
    if op in ("In", "NotIn") and not values:
        return f"values: must be non-empty when operator is {op}"
    if op in ("Exists", "DoesNotExist") and values:
        return f"values: must be empty when operator is {op}"
    if op in ("Gt", "Lt") and (len(values) != 1 or _int64(values[0]) is None):
        return f"values: must be one integer when operator is {op}"
    for value in values:
        if not label_value_ok(value):
            return (f"values: {value!r} is no label value (at most 63 letters, digits, '-', "
                    "'_' or '.', beginning and ending with a letter or digit; no sign)")
    return None


def _int64(text: str) -> int | None:
    if not _INT64.fullmatch(text):
        return None
    value = int(text)
    return value if -2**63 <= value < 2**63 else None


def _requirement(name: str, labels: Mapping[str, str], req: Mapping[str, Any],
                 field: bool) -> bool:
    """One matchExpressions (or matchFields: metadata.name) requirement, as
    k8s.io/apimachinery/pkg/labels Requirement.Matches: In, NotIn, Exists, DoesNotExist, and
    Gt/Lt on a label parsed as an int64 (a label that is not one matches neither)."""
    key, op, values = req.get("key", ""), req.get("operator", ""), req.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values) \
            or not isinstance(key, str) or not isinstance(op, str) \
            or _unparsed(key, op, tuple(values), field):
        return False  # kube-scheduler cannot parse it: its term matches no node
    if field:
        value = name if key == "metadata.name" else None
    else:
        value = labels.get(key)
    if op == "In":
        return value is not None and value in values
    if op == "NotIn":
        return value is None or value not in values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and len(values) == 1:
        have, bound = _int64(value), _int64(str(values[0]))
        if have is None or bound is None:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def term_matches(node: Any, term: Mapping[str, Any]) -> bool:
    """One nodeSelectorTerm: all of its matchExpressions (node labels) and matchFields; a term
    with neither matches nothing."""
    exprs, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
    return bool(exprs or fields) \
        and all(_requirement(node.name, node.labels, r, False) for r in exprs) \
        and all(_requirement(node.name, node.labels, r, True) for r in fields)


def matches(node: Any, terms: Terms) -> bool:
    """Whether the node matches nodeSelectorTerms, as kube-scheduler's NodeAffinity filter
    and VolumeBinding read them (k8s.io/component-helpers/scheduling/corev1/nodeaffinity,
    NodeSelector.Match): any one term (ORed), all of that term's requirements (ANDed); an
    empty term matches nothing, and so does an empty list of terms."""
    return any(term_matches(node, term) for term in terms)


def required_terms(node_affinity: Mapping[str, Any] | None) -> tuple[Mapping[str, Any], ...] | None:
    """The required nodeSelectorTerms of a pod's nodeAffinity, or None when it requires
    nothing (every node matches; not the same as no terms, which match no node)."""
    required = (node_affinity or {}).get(REQUIRED)
    if not isinstance(required, Mapping):
        return None
    return tuple(required.get("nodeSelectorTerms") or ())


def _requirement_problem(where: str, req: Any, field: bool) -> str | None:
    """What the API server refuses in one requirement (kubernetes pkg/apis/core/validation:
    validateNodeSelectorRequirement, validateNodeFieldSelectorRequirement), and what it takes
    but kube-scheduler cannot parse (`_unparsed`): a Gt/Lt value that is no integer, a value
    that is no label value ("-1", "eu west"), so that no node would match the term."""
    if not isinstance(req, Mapping):
        return f"{where}: must be a mapping with key, operator and values"
    key, op, values = req.get("key"), req.get("operator"), req.get("values")
    if not isinstance(key, str) or not key:
        return f"{where}.key: required"
    if values is not None and (not isinstance(values, list)
                               or not all(isinstance(v, str) for v in values)):
        return f"{where}.values: must be a list of strings"
    values = values or []
    if field:
        if key != "metadata.name":
            return f"{where}.key: matchFields supports only metadata.name"
        if found := _unparsed(key, str(op), tuple(values), True):
            return f"{where}: {found}"
        if len(values[0]) > 253 or not _DNS_SUBDOMAIN.fullmatch(values[0]):
            return f"{where}.values: {values[0]!r} is no node name (a DNS subdomain)"
        return None
    if found := label_key_problem(key):
        return f"{where}.key: {key!r} is no label key: {found}"
    if op not in _OPERATORS:
        return f"{where}.operator: must be one of {', '.join(_OPERATORS)}"
    if found := _unparsed(key, op, tuple(values), False):
        return f"{where}.{found}"
    return None


def _term_problem(where: str, term: Any) -> str | None:
    if not isinstance(term, Mapping):
        return f"{where}: must be a mapping (matchExpressions, matchFields)"
    for part, field in (("matchExpressions", False), ("matchFields", True)):
        items = term.get(part) or []
        if not isinstance(items, list):
            return f"{where}.{part}: must be a list"
        for i, req in enumerate(items):
            if problem := _requirement_problem(f"{where}.{part}[{i}]", req, field):
                return problem
    return None


def problem(node_affinity: Any) -> str | None:
    """What the API server would refuse in a pod's nodeAffinity (pkg/apis/core/validation:
    validateNodeAffinity), or None: required terms need at least one term; preferred terms a
    weight in 1..100 and a preference."""
    if not isinstance(node_affinity, Mapping):
        return "must be a mapping"
    required = node_affinity.get(REQUIRED)
    if required is not None:
        terms = required.get("nodeSelectorTerms") if isinstance(required, Mapping) else None
        if not isinstance(terms, list) or not terms:
            return f"{REQUIRED}.nodeSelectorTerms: must have at least one node selector term"
        for i, term in enumerate(terms):
            if found := _term_problem(f"{REQUIRED}.nodeSelectorTerms[{i}]", term):
                return found
        # the API server takes it, but an empty term matches no node: no build would start
        if not any(t.get("matchExpressions") or t.get("matchFields") for t in terms):
            return (f"{REQUIRED}.nodeSelectorTerms: every term is empty (no matchExpressions "
                    "or matchFields), and an empty term matches no node")
    preferred = node_affinity.get(PREFERRED) or []
    if not isinstance(preferred, list):
        return f"{PREFERRED}: must be a list"
    for i, item in enumerate(preferred):
        where = f"{PREFERRED}[{i}]"
        if not isinstance(item, Mapping):
            return f"{where}: must be a mapping (weight, preference)"
        weight = item.get("weight")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 100:
            return f"{where}.weight: must be in the range 1-100"
        if found := _term_problem(f"{where}.preference", item.get("preference")):
            return found
    return None


def combined(own: Mapping[str, Any], ours: Mapping[str, Any] | None) -> dict[str, Any]:
    """The agent pod's nodeAffinity from a template's own (`own`, its podSpecPatch's) and
    placement's (`ours`: core.pods.candidate_affinity's, or None when not placed): each of
    the template's required terms with our candidate-hostname requirement first in it (terms
    are ORed: added to one only, the others would let the pod go to nodes placement never
    counted it on), a term that matches nothing left out (with ours added it would match our
    candidates); our preferred terms, then the template's."""
    out: dict[str, Any] = {}
    ours = ours or {}
    mine = required_terms(own)
    theirs = (ours.get(REQUIRED) or {}).get("nodeSelectorTerms") or []
    if mine is None:
        if theirs:
            out[REQUIRED] = {"nodeSelectorTerms": [dict(t) for t in theirs]}
    elif not theirs:
        out[REQUIRED] = {"nodeSelectorTerms": [dict(t) for t in mine]}
    else:
        extra = [e for t in theirs for e in t.get("matchExpressions") or []]
        out[REQUIRED] = {"nodeSelectorTerms": [
            {**term, "matchExpressions": extra + list(term.get("matchExpressions") or [])}
            for term in mine if term.get("matchExpressions") or term.get("matchFields")]}
    preferred = list(ours.get(PREFERRED) or []) + list(own.get(PREFERRED) or [])
    if preferred:
        out[PREFERRED] = preferred
    return out

"""What the API server's own admission plugins say when they refuse a pod, read for the little
a build's error may name: resource names and quantities, rebuilt from what was matched, never
the message itself (an admission webhook's message may quote the pod; these plugins' words
hold no part of the object).
"""

import re
from decimal import Decimal

from workers.core.quantity import parse_quantity
from workers.core.quota_usage import Exceeded

# ResourceQuota (k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go
# checkRequest): "exceeded quota: NAME, requested: R, used: U, limited: L", each list the
# exceeded resources as "resource=quantity" joined by "," (prettyPrint).
# A list ends where its items do: no "," or "]" of text around it is taken for a quantity.
_ITEMS = r"((?:[\w./-]+=[\w.+-]+)(?:,[\w./-]+=[\w.+-]+)*|)"
_QUOTA = re.compile(rf"exceeded quota: ([a-z0-9.-]+), requested: {_ITEMS}, used: {_ITEMS}, "
                    rf"limited: {_ITEMS}")
# The same checkRequest, hasUsageStats: "status unknown for quota: NAME, resources: R", a quota
# the quota controller (pkg/controller/resourcequota, asynchronous) has not counted yet since
# it was made or its hard limits changed.
_QUOTA_UNCOUNTED = re.compile(r"status unknown for quota: ([a-z0-9.-]+)")
# ResourceQuota's Constraints (same checkRequest; pkg/quota/v1/evaluator/core/pods.go
# podEvaluator.Constraints): "failed quota: NAME: must specify limits.cpu for: build,jnlp;
# requests.memory for: x", a quota on one of cpu, memory, requests.*, limits.* and a container
# naming no such request or limit (resources sorted, container names sorted, ","-joined).
_QUOTA_UNNAMED = re.compile(r"failed quota: ([a-z0-9.-]+): must specify (.+)")
_UNNAMED_PART = re.compile(r"((?:requests\.|limits\.)?(?:cpu|memory)) for: ([a-z0-9,-]+)")
# LimitRanger (plugin/pkg/admission/limitranger/admission.go minConstraint, maxConstraint):
# "maximum cpu usage per Container is 2, but limit is 4." or "...is 2.  No limit is
# specified." ("Maximum"/"Minimum" before Kubernetes 1.2x).
_LIMIT_RANGE = re.compile(r"([Mm]aximum|[Mm]inimum) ([a-z0-9./-]+) usage per (Container|Pod) "
                          r"is ([0-9.]+[A-Za-z]*)(?:, but (limit|request) is ([0-9.]+[A-Za-z]*)"
                          r"|\.  No (limit|request) is specified)")
# limitRequestRatioConstraint (same file): "cpu max limit to request ratio per Container is 4,
# but provided ratio is 8.000000." or "..., but no limit is specified or limit is 0."
_RATIO = re.compile(r"([a-z0-9./-]+) max limit to request ratio per (Container|Pod) is "
                    r"([0-9.]+[A-Za-z]*), but (?:provided ratio is ([0-9]+(?:\.[0-9]+)?)"
                    r"|no (limit|request) is specified)")
# A quantity as resource.Quantity's String() prints one (apimachinery pkg/api/resource
# quantity.go: a number, then a binary or decimal SI suffix or a decimal exponent "e3").
# RuntimeClass (plugin/pkg/admission/runtimeclass/admission.go): prepareObjects' "pod rejected:
# RuntimeClass \"NAME\" not found" (a class name: a DNS subdomain), and setScheduling's
# "conflict: runtimeClass.scheduling.nodeSelector[KEY] = V; pod.spec.nodeSelector[KEY] = W" (a
# label key and values, the template's and the class's); setOverhead's "Pod's Overhead doesn't
# match" never meets our pods, which set no overhead.
_RUNTIME_CLASS_MISSING = re.compile(r'pod rejected: RuntimeClass "([a-z0-9.-]+)" not found')
_RUNTIME_CLASS_CONFLICT = re.compile(
    r"conflict: runtimeClass\.scheduling\.nodeSelector\[([\w./-]+)\] = ([\w.-]*); "
    r"pod\.spec\.nodeSelector\[[\w./-]+\] = ([\w.-]*)")
_QUANTITY = re.compile(r"[+-]?[0-9.]+(?:[eE][+-]?[0-9]+|[A-Za-z]*)")
# A count of pods (`pods`, and the object count `count/pods`: pkg/quota/v1/evaluator/core/
# pods.go podResources) is the admin's, not the pod's size: a `pods: 0` pauses CI in the
# namespace and is lifted later, and every pod asks 1, so "asks more than the hard limit" says
# nothing about this pod ever fitting. Such a refusal is a wait, never a build's failure.
_COUNTS = frozenset({"pods", "count/pods"})


def _refusals(message: str) -> list[tuple[str, dict[str, str], dict[str, str], dict[str, str]]]:
    """Each "exceeded quota" in the message: (quota, asked, used, hard), each resource ->
    quantity as printed. The API server names one quota per refusal (checkRequest returns at
    the first quota the pod exceeds, in its lister's order); every one is read all the same."""
    return [(m[1], *(_pairs(text) for text in (m[2], m[3], m[4])))
            for m in _QUOTA.finditer(message)]


def _pairs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _amount(text: str | None) -> Decimal | None:
    """A quantity as Kubernetes prints one ("2", "500m", "1Gi", "1e3"), None when it is none."""
    if text is None or not _QUANTITY.fullmatch(text):
        return None
    try:
        return parse_quantity(text)
    except ValueError:
        return None


def _read(message: str) -> list[tuple[str, str, Decimal | None, Decimal | None,
                                     Decimal | None]]:
    """(quota, resource, asked, used, hard) for each resource every named quota gives as
    exceeded, None for what is no quantity."""
    return [(name, r, _amount(asked.get(r)), _amount(used.get(r)), _amount(hard[r]))
            for name, asked, used, hard in _refusals(message) for r in sorted(hard)]


def quota_never_fits(message: str) -> str | None:
    """What says a quota can never admit the object ("ResourceQuota NAME allows requests.cpu=1
    in all, the pod asks requests.cpu=2"), "; "-joined per quota, or None when it may once
    pods end or the admin raises a pod count (or the message is not the plugin's)."""
    found = []
    for name, asked, _used, hard in _refusals(message):
        over = [r for r in sorted(hard) if r in asked and r not in _COUNTS
                and (a := _amount(asked[r])) is not None
                and (h := _amount(hard[r])) is not None and a > h]
        if over:
            found.append(f"ResourceQuota {name} allows {','.join(f'{r}={hard[r]}' for r in over)}"
                         f" in all, the pod asks {','.join(f'{r}={asked[r]}' for r in over)}")
    return "; ".join(found) or None


def quota_full_words(message: str) -> str | None:
    """What a full quota lacks, for the build waiting on it ("ResourceQuota compute:
    requests.cpu 2100m of 3 used, the pod asks 2100m"), "; "-joined per resource and quota;
    None when the message is not the plugin's."""
    found = []
    for name, asked, used, hard in _refusals(message):
        parts = [f"{r} {used[r]} of {hard[r]} used, the pod asks {asked[r]}" for r in sorted(hard)
                 if r in asked and r in used
                 and all(_amount(v[r]) is not None for v in (asked, used, hard))]
        if parts:
            found.append(f"ResourceQuota {name}: {'; '.join(parts)}")
    return "; ".join(found) or None


def quota_paused(message: str) -> bool:
    """Whether the refusal is a pod count below 1 (`pods: 0`, `count/pods: 0`; a `500m`
    admits no pod either) of any quota it names: an admin's pause of the namespace, not a
    quota that pods ending would free."""
    return any(r in _COUNTS and hard is not None and hard < 1
               for _, r, _, _, hard in _read(message))


def quota_exceeded(message: str) -> tuple[Exceeded, ...] | None:
    """Every resource of every quota the refusal names as exceeded, with what the pod asked,
    the quota's use and its hard limit; None when the message is not the plugin's or any of
    them is no quantity (what one pod going would free is then unknown)."""
    found = []
    for quota, resource, asked, used, hard in _read(message):
        if asked is None or used is None or hard is None:
            return None
        found.append(Exceeded(quota, resource, asked, used, hard))
    return tuple(found) or None


def quota_uncounted_words(message: str) -> str | None:
    """A quota not counted yet, for the builds waiting on it ("ResourceQuota compute: use
    not counted yet"); None when the message is not the plugin's."""
    match = _QUOTA_UNCOUNTED.search(message)
    return f"ResourceQuota {match[1]}: use not counted yet" if match else None


def quota_unnamed_words(message: str) -> str | None:
    """What a quota makes every container name and which do not ("ResourceQuota compute needs
    limits.cpu on every container (none on build, jnlp)"), "; "-joined per resource; None
    when the message is not the plugin's. Container names are our own manifest's."""
    match = _QUOTA_UNNAMED.search(message)
    if match is None:
        return None
    parts = [f"{m[1]} on every container (none on {m[2].replace(',', ', ')})"
             for m in _UNNAMED_PART.finditer(match[2])]
    return f"ResourceQuota {match[1]} needs {'; '.join(parts)}" if parts else None


def limit_range_words(message: str) -> str | None:
    """Each LimitRange min, max or maxLimitRequestRatio the pod breaks ("maximum cpu usage per
    Container is 2, but request is 4"), in the message's order, "; "-joined; None when the
    message has none."""
    found = []
    for m in _LIMIT_RANGE.finditer(message):
        bound, resource, per, value = m[1].lower(), m[2], m[3], m[4]
        found.append((m.start(), f"{bound} {resource} usage per {per} is {value}, but {m[5]} "
                      f"is {m[6]}" if m[5] else f"{bound} {resource} usage per {per} is "
                      f"{value}, and no {m[7]} is given"))
    for m in _RATIO.finditer(message):
        head = f"{m[1]} max limit to request ratio per {m[2]} is {m[3]}"
        found.append((m.start(), f"{head}, but the ratio is {m[4]}" if m[4]
                      else f"{head}, and no {m[5]} is given"))
    return "; ".join(words for _, words in sorted(found)) or None


def runtime_class_words(message: str) -> str | None:
    """Why the RuntimeClass admission refused the pod: its class is missing, or the class's
    node selector sets a label the template sets otherwise; None when the message says
    neither."""
    if (m := _RUNTIME_CLASS_MISSING.search(message)) is not None:
        return f"RuntimeClass {m[1]} not found"
    if (m := _RUNTIME_CLASS_CONFLICT.search(message)) is not None:
        return (f"RuntimeClass nodeSelector {m[1]}={m[2]} conflicts with the template's "
                f"{m[1]}={m[3]}")
    return None

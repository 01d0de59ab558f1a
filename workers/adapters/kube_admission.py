"""What the API server's own admission plugins say when they refuse a pod, read for the little
a build's error may name: resource names and quantities, rebuilt from what was matched, never
the message itself (an admission webhook's message may quote the pod; these plugins' words
hold no part of the object).
"""

import re

from workers.core.quantity import parse_quantity

# ResourceQuota (k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go
# checkRequest): "exceeded quota: NAME, requested: R, used: U, limited: L", each list the
# exceeded resources as "resource=quantity" joined by "," (prettyPrint).
_QUOTA = re.compile(r"exceeded quota: ([a-z0-9.-]+), requested: (\S*), used: (\S*), "
                    r"limited: (\S*)")
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
_QUANTITY = re.compile(r"[0-9.]+[A-Za-z]*")
# A count of pods (`pods`, and the object count `count/pods`: pkg/quota/v1/evaluator/core/
# pods.go podResources) is the admin's, not the pod's size: a `pods: 0` pauses CI in the
# namespace and is lifted later, and every pod asks 1, so "asks more than the hard limit" says
# nothing about this pod ever fitting. Such a refusal is a wait, never a build's failure.
_COUNTS = frozenset({"pods", "count/pods"})


def quota_never_fits(message: str) -> str | None:
    """What says a quota can never admit the object ("ResourceQuota NAME allows requests.cpu=1
    in all, the pod asks requests.cpu=2"), or None when it may once pods end or the admin
    raises a pod count (or the message is not the plugin's)."""
    match = _QUOTA.search(message)
    if match is None:
        return None
    try:
        asked, hard = (dict(part.split("=", 1) for part in text.split(",") if part)
                       for text in (match[2], match[4]))
        over = sorted(r for r in asked if r in hard and r not in _COUNTS
                      and _QUANTITY.fullmatch(asked[r])
                      and _QUANTITY.fullmatch(hard[r])
                      and parse_quantity(asked[r]) > parse_quantity(hard[r]))
    except ValueError:  # not a quantity (a later wording): left to be retried, as before
        return None
    if not over:
        return None
    return (f"ResourceQuota {match[1]} allows {','.join(f'{r}={hard[r]}' for r in over)} in "
            f"all, the pod asks {','.join(f'{r}={asked[r]}' for r in over)}")


def quota_full_words(message: str) -> str | None:
    """What a full quota lacks, for the build waiting on it ("ResourceQuota compute:
    requests.cpu 2100m of 3 used, the pod asks 2100m"), "; "-joined per resource; None when
    the message is not the plugin's."""
    match = _QUOTA.search(message)
    if match is None:
        return None
    asked, used, hard = (dict(part.split("=", 1) for part in text.split(",") if "=" in part)
                         for text in (match[2], match[3], match[4]))
    parts = [f"{r} {used[r]} of {hard[r]} used, the pod asks {asked[r]}" for r in sorted(hard)
             if r in asked and r in used
             and all(_QUANTITY.fullmatch(v[r]) for v in (asked, used, hard))]
    return f"ResourceQuota {match[1]}: {'; '.join(parts)}" if parts else None


def quota_paused(message: str) -> bool:
    """Whether the refusal is a pod count of 0 (`pods: 0`, `count/pods: 0`): an admin's pause
    of the namespace, not a quota that pods ending would free."""
    match = _QUOTA.search(message)
    if match is None:
        return False
    hard = dict(part.split("=", 1) for part in match[4].split(",") if "=" in part)
    return any(r in hard and _QUANTITY.fullmatch(hard[r]) and parse_quantity(hard[r]) == 0
               for r in _COUNTS)


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

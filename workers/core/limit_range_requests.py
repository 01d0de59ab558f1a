"""What a namespace's LimitRange defaults add to an agent pod's requests, for placement to
count. Pure.

The LimitRanger gives every container and init container asking none of a resource the
LimitRange's default request for it (kubernetes plugin/pkg/admission/limitranger/admission.go
defaultContainerResourceRequirements, mergeContainerResources; the default request is the
item's defaultRequest, else its default, else its max, else its min: pkg/apis/core/v1/
defaults.go SetDefaults_LimitRangeItem). kube-scheduler counts the pod's requests as the sum
of its containers', or an init container's when larger (NodeResourcesFit,
resourcehelper.PodRequests). Our containers all ask cpu and memory (core.pods); the build
container asks ephemeral-storage and extended resources only when its template says so. A
default for those landed on every other container uncounted: a build was placed on a node
whose ephemeral-storage or device the scheduler then found short, and its pod stayed Pending.
"""

import math
from collections.abc import Mapping

from workers.core.models import PodTemplate
from workers.core.quantity import parse_quantity

_ASKED_ALWAYS = ("cpu", "memory")  # every container of ours names these (core.pods)


def _containers(template: PodTemplate) -> int:
    """How many (non-init) containers the template's pods have (core.pods): jnlp with the
    template's containers, but no jnlp with agent injection and a container marked build."""
    jnlp = not (template.agent_injection and template.build_containers)
    return len(template.containers) + (1 if jnlp else 0)


def added_requests(template: PodTemplate, defaults: Mapping[str, str]
                   ) -> tuple[tuple[str, int], ...]:
    """(resource, amount) the defaults add to the pod's requests beside the template's own,
    sorted: a default for each container asking none of it (the build container asks its
    template's ephemeralStorage and `resources`). An init container's default is no more
    than the containers' sum when that counts one; else (the build container alone asks it)
    the excess of the agent's init container's over it. Bytes for ephemeral-storage, whole
    units (rounded up) for the rest."""
    count = _containers(template)
    out = []
    for resource, value in sorted(defaults.items()):
        if resource in _ASKED_ALWAYS:
            continue
        try:
            amount = math.ceil(parse_quantity(value))
        except ValueError:
            continue
        asked = template.ephemeral_storage if resource == "ephemeral-storage" \
            else template.resources.get(resource)
        without = count - (1 if asked else 0)
        if amount > 0 and without > 0:
            out.append((resource, amount * without))
        elif amount > (asked or 0) and template.agent_injection:
            # the build container alone, asking less than the default its agent's init
            # container gets: the pod's request is the init container's (PodRequests' max)
            out.append((resource, amount - (asked or 0)))
    return tuple(out)

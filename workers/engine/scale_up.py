"""The reconcile loop's scale-up pods (workers.core.scale_up) follow the builds that wait for
room: one per build that a new node would place, made when it starts waiting, deleted when it
no longer does or once the scheduler has bound it (a node with room exists: the re-drive this
asks for places the build there). On unless CI_AUTOSCALER_SCALE_UP_PODS is false.

They are made in the agent namespace, so a ResourceQuota there counts them as it counts every
pod that has not ended: a full quota keeps them back (no node is added for builds it would not
admit), and each holds its build's room in the quota until the build is placed, when it goes
first (give_way)."""

import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

from workers import runtime
from workers.engine import namespace_sizes, redrive, tasks
from workers.adapters.kube_errors import QuotaFull
from workers.core import podsize, quota_usage, scale_up
from workers.core.errors import CIAutoscalerError, PermanentError
from workers.core.placement import WaitReason
from workers.core.sizing import template_min

log = logging.getLogger("ci_autoscaler.scale_up")
T = TypeVar("T")
# Between creates of a build's pod refused by its quota just after its own scale-up pod was
# deleted: the quota controller counts a deleted pod out within about a second.
GIVE_WAY_RETRY_SECONDS = (0.2, 0.4, 0.8, 1.6)
# Waits a node of the template's at all would end (no node matches, or none is left that did
# not refuse it): the pause pod is made unless a node it would be bound on in vain is there.
ANY_NODE = (WaitReason.NO_MATCHING_NODE, WaitReason.UNSCHEDULABLE)


def sync(rt: runtime.Runtime) -> dict[str, int]:
    """One pass; how many scale-up pods were made and deleted, and how many had been bound."""
    if rt.scale_up is None:
        return {}
    keys = rt.capacity.waiting()  # longest waiting first
    rows = rt.state.build_fields(keys, "wait_reason", "template") if keys else []
    in_vain = _bound_in_vain(rt)
    template_of = {key: template for key, (reason, template) in zip(keys, rows)
                   if reason and template in rt.config.templates
                   and scale_up.wants_node(reason,
                                           in_vain=reason in ANY_NODE and in_vain(template))}
    before = rt.scale_up.list()
    decided = scale_up.plan(list(template_of), before, limit=rt.settings.scale_up_pods_max)
    deleted = sum(1 for name in decided.delete if rt.scale_up.delete(name))
    made, present, tried = 0, 0, []
    for key in decided.create:
        tried.append(key)
        name = template_of[key]
        template = namespace_sizes.fitted(rt, rt.config.templates[name])
        try:
            made += rt.scale_up.create(scale_up.manifest(
                build_key=key, template_name=name, template=template,
                requests=podsize.container_requests(template, template_min(template),
                                                    with_sidecars=False),
                init=podsize.init_requests(template),
                image=rt.settings.scale_up_image, installation=rt.settings.installation))
            present += 1  # made, or found made (a create retried after its answer was lost)
        except QuotaFull as err:
            # The agent namespace's quota is full: the later pods would be refused alike, and a
            # node added for a build the quota holds back would not start it. Tried again next
            # pass, as the builds are. Raised (it is retryable), it failed this sync every
            # pass, counted as a reconcile error, before the re-drive asked for pods bound.
            log.info("scale-up pods wait for room in a ResourceQuota",
                     extra={"build_key": key, "template": name, "detail": err.words})
            break
        except PermanentError as err:
            # This pod refused for good (a LimitRange's max, a policy): the builds after it,
            # of other templates most often, still get theirs; raised, one refused template
            # kept every later build's node from being asked for, pass after pass.
            tasks.engine_metrics(rt).error("reconcile", err)
            log.warning("scale-up pod refused", extra={"build_key": key, "template": name,
                                                       "error": str(err)})
    # A build a worker placed since `waiting` was read (its give_way found no pod of it yet to
    # delete) has its agent's pod: its pause pod goes now, not Pending until the next pass,
    # when a cluster autoscaler may have added a node for it (it scans every 10 s).
    placed = set(tried) - rt.capacity.still_waiting(tried)
    deleted += sum(1 for key in placed
                   if rt.scale_up.delete(scale_up.pod_name(key, rt.settings.installation)))
    existing = len(before) - deleted + present
    rt.capacity.write_scale_up_pods(existing)
    if decided.bound:  # nodes appeared for them: place the builds now
        redrive.request_redrive(rt)
        log.info("scale-up pods bound: a node has room; builds re-driven",
                 extra={"bound": decided.bound})
    if made:
        log.info("scale-up pods made for builds waiting for room", extra={"made": made})
    return {"scale_up_pods_created": made, "scale_up_pods_deleted": deleted,
            "scale_up_pods_bound": decided.bound}


def _bound_in_vain(rt: runtime.Runtime) -> Callable[[str], bool]:
    """Whether a template's scale-up pod would be bound on a node already in the cluster (its
    builds match no node: that one is left out for them, off their claims' volumes, NotReady,
    cordoned or being removed, and the pod tolerates it: core.scale_up.binds_pause_pod).
    Bound, it was deleted and the build re-driven to match no node again, and made again the
    next pass, for as long as that node stayed; and no node was ever added for the build."""
    nodes: list | None = None
    seen: dict[str, bool] = {}

    def in_vain(name: str) -> bool:
        nonlocal nodes
        if name not in seen:
            if nodes is None:
                nodes = rt.view.snapshot()
            template = rt.config.templates[name]
            seen[name] = any(scale_up.binds_pause_pod(n, template) for n in nodes)
        return seen[name]
    return in_vain


def give_way(rt: runtime.Runtime, build_key: str, create: Callable[[], T], *,
             sleep: Callable[[float], None] = time.sleep) -> Callable[[], T]:
    """`create` (the build's agent pod, now placed) after the build's own scale-up pod is
    deleted, if it has one: a ResourceQuota of the namespace counts that pod, and left until
    the next pass's sync it refused the agent pod the room it held for it (the build then
    waited on the quota beside a node with room). Admission counts a deleted pod until the
    quota controller has seen it go (apiserver resourcequota/controller.go checkRequest reads
    status.used, which pkg/controller/resourcequota lowers asynchronously): a quota refusal
    right after the delete is tried again a few times within seconds, when the pod gone would
    make room for it (_its_room). Best effort: a delete that fails leaves the create to the
    quota, and the pod to the next sync."""
    pods = rt.scale_up
    if pods is None:
        return create
    name = scale_up.pod_name(build_key, rt.settings.installation)

    def run() -> T:
        try:
            gone = pods.delete_counted(name)
        except CIAutoscalerError as err:  # refused too (a webhook's 403): never the build's
            log.warning("scale-up pod not deleted before its build's pod",
                        extra={"build_key": build_key, "pod": name, "error": str(err)})
            return create()
        if gone is None:
            return create()
        log.info("scale-up pod deleted: its build is placed",
                 extra={"build_key": build_key, "pod": name})
        for pause in GIVE_WAY_RETRY_SECONDS:
            try:
                return create()
            except QuotaFull as err:
                if not _its_room(err, gone):
                    raise
                sleep(pause)  # the deleted pod not counted out yet
        return create()
    return run


def _its_room(err: QuotaFull, gone: dict[str, Decimal]) -> bool:
    """Whether the quota refusal could be the deleted scale-up pod (counting `gone`) still
    counted. Not an admin's pause (`pods: 0`), a quota the build's pod would still exceed
    without it, or one not counted yet (no use refused it): those waited some 3 s for
    nothing, holding the re-drive's turn, before the build waited on the quota as it would
    have at once. A refusal not read (another wording) is tried again as before."""
    if err.paused:
        return False
    return err.exceeded is None or quota_usage.room_if_gone(err.exceeded, gone)

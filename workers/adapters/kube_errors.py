"""Kubernetes client errors turned into the project's own, for every Kubernetes adapter.

429, 5xx, timeouts and connection errors become ``RetryableError`` (the API server not
answering at all, ``ApiNotServing``); other 4xx become
``PermanentError``; both chained with ``from``. Messages name what was done, the HTTP status and
reason (its first line) only, never a request or response body: pods' env may hold secrets, and
an admission webhook's message may quote the object it refused.

A 403 is told apart by its Status message (read, never repeated):
- a ResourceQuota's "exceeded quota" (the ResourceQuota admission plugin,
  k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go checkRequest: Forbidden,
  "exceeded quota: NAME, requested: R, used: U, limited: L", each "resource=quantity" of the
  exceeded resources joined by ","; one quota named, the first the object exceeds in the
  plugin's lister order, though every one a message names is read) is retryable (``QuotaFull``, naming the quota and what
  it lacks): the namespace is full for now, and a pod ending frees it; unless the object alone asks more of a resource than the quota's hard limit
  (requested above limited): no pod ending ever makes room for it, so it is ``Refused``, named
  with the quota and the resources (the plugin's own words, quantities only, no object);
- the same plugin's "status unknown for quota: NAME, resources: R" (hasUsageStats: the quota
  controller has not counted a quota made or changed moments ago) is ``QuotaFull`` too: it
  passes within seconds, and was taken for the pod's own refusal, failing every build that
  met it;
- RBAC's refusal ("User \"...\" cannot create resource \"pods\" in API group ...",
  k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go) is a PermanentError: our
  service account lacks a permission, and the same request goes through once it has it;
- every other one (Pod Security admission, a LimitRange, a policy webhook) is ``Refused``, as
  are 400 and 422 (the object is invalid): the object itself is refused, every time. A
  LimitRange's min or max is named (workers.adapters.kube_admission: rebuilt from the
  plugin's resource names and quantities, never the message itself), and so is a RuntimeClass
  the pod names that is missing, or whose node selector conflicts with the pod's
  (kube_admission.runtime_class_words), and a quota that
  needs every container to name a limit or request some do not ("failed quota: NAME: must
  specify limits.cpu for: ...": ours name no CPU limit without cpuLimitFactor).
"""

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from workers.adapters.kube_admission import (
    limit_range_words, quota_exceeded, quota_full_words, quota_never_fits, quota_paused,
    quota_uncounted_words, quota_unnamed_words, runtime_class_words)
from workers.adapters.retry import retry_after_seconds
from workers.core.errors import CIAutoscalerError, PermanentError, RetryableError
from workers.core.quota_usage import Exceeded

T = TypeVar("T")


def api_call(what: str, fn: Callable[..., T], *args: Any,
             let_through: int | tuple[int, ...] = (), **kwargs: Any) -> T:
    """fn(*args, **kwargs); an ApiException with a let_through status is re-raised as it is,
    every other ApiException or urllib3 error becomes RetryableError or PermanentError."""
    let_through = (let_through,) if isinstance(let_through, int) else let_through
    try:
        return fn(*args, **kwargs)
    except ApiException as err:
        if err.status in let_through:
            raise
        message = _message(err.body)
        if err.status == 403 and "exceeded quota" in message:
            if (never := quota_never_fits(message)) is not None:
                raise Refused(f"{what} failed: HTTP 403 {_first_line(err.reason)} (exceeded "
                              f"quota: {never})", exceeded=quota_exceeded(message)) from err
            raise QuotaFull(f"{what} failed: HTTP 403 {_first_line(err.reason)} "
                            "(exceeded quota)", words=quota_full_words(message),
                            paused=quota_paused(message),
                            exceeded=quota_exceeded(message)) from err
        if err.status == 403 and (uncounted := quota_uncounted_words(message)):
            # The quota controller has not counted a new or changed quota yet: every pod is
            # refused so for seconds, then admitted or counted against it; never the pod's.
            raise QuotaFull(f"{what} failed: HTTP 403 {_first_line(err.reason)} (quota not "
                            "counted yet)", words=uncounted, exceeded=()) from err
        if err.status in (400, 422) or err.status == 403 and not _RBAC.search(message):
            words = None
            if err.status == 403 and (unnamed := quota_unnamed_words(message)):
                # Every pod is refused so until the containers name it: what gives them one.
                words = f"{unnamed}; a LimitRange default gives one" + (
                    ", or the template's cpuLimitFactor" if "limits.cpu" in unnamed else "")
            elif err.status == 403 and (limits := limit_range_words(message)):
                words = f"LimitRange: {limits}"
            elif err.status == 403 and (runtime := runtime_class_words(message)):
                words = runtime
            raise Refused(f"{what} failed: HTTP {err.status} {_first_line(err.reason)}"
                          + (f" ({words})" if words else "")) from err
        raise status_error(what, err.status or 0, err.reason,
                           retry_after=retry_after_seconds((err.headers or {}).get("Retry-After"))
                           ) from err
    except urllib3.exceptions.HTTPError as err:  # refused, reset, timed out
        retried = isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason
        cause = err.reason if retried else err  # what made urllib3 give up retrying
        raise ApiNotServing(f"{what} failed: {type(cause).__name__}") from err


class ApiNotServing(RetryableError):
    """The API server did not answer the call: no connection, a reset, a read timeout (a
    slow or overloaded API server), or a front's 502/503/504 (a load balancer with no
    healthy API server behind it). Every call made now would meet the same, each retried
    within the call (workers.adapters.retry): a re-drive that meets it stops its pass
    (workers.engine.redrive)."""


class ApiThrottled(RetryableError):
    """The API server refused the call to slow us down: 429 Too Many Requests, from its
    priority and fairness or max-in-flight filter, with Retry-After 1
    (k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go and maxinflight.go,
    tooManyRequests). Our calls share one priority level, so every call made now is refused
    alike: a re-drive that meets it, once retried within the call, stops its pass
    (workers.engine.redrive)."""


class Refused(PermanentError):
    """The API refused the object itself (admission or validation): the same request is
    refused every time, whoever sends it. `exceeded`: what a ResourceQuota the object alone
    asks more of than it allows lacks (kube_admission.quota_exceeded), None otherwise; a
    quota on limits is met by lower limits (core.quota_limits)."""

    def __init__(self, message: str, *, exceeded: tuple[Exceeded, ...] | None = None) -> None:
        super().__init__(message)
        self.exceeded = exceeded


class QuotaFull(RetryableError):
    """A ResourceQuota of the namespace has no room for the object now; `words` name the quota
    and what it lacks (quantities only), None when its message was not the plugin's. Admission
    refused it: nothing was made. Not retried within the call: the quota frees when a pod
    ends and the quota controller has counted it (pkg/controller/resourcequota, asynchronously:
    seconds), not in the second of a backoff; the build waits with reason quota and every
    release and reconcile pass tries it again. Four creates per attempt were three refused
    for nothing, and their sleeps held a re-drive's chunk back."""

    in_call = False

    def __init__(self, message: str, *, words: str | None = None, paused: bool = False,
                 exceeded: tuple[Exceeded, ...] | None = None) -> None:
        super().__init__(message)
        self.words = words
        self.paused = paused  # a pod count of 0: the admin's pause (kube_admission.quota_paused)
        # What the quota lacks, resource by resource (kube_admission.quota_exceeded); () for
        # a quota not counted yet (no resource of the object's refused it); None when unknown
        # (a message not read).
        self.exceeded = exceeded


# RBAC's message: User "NAME" cannot VERB resource "RESOURCE" in API group ...
_RBAC = re.compile(r'cannot [a-z]+ resource "')


def _message(body: Any) -> str:
    """The message of an error's Status body, "" when there is none."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        message = json.loads(body).get("message", "") if body else ""
    except (ValueError, AttributeError):
        return ""
    return message if isinstance(message, str) else ""


def _first_line(reason: str | None) -> str:
    return (reason or "no reason").splitlines()[0]


def status_error(what: str, status: int, reason: str | None, *,
                 retry_after: float | None = None) -> CIAutoscalerError:
    """The error for an HTTP status (also as a watch's ERROR event reports it)."""
    message = f"{what} failed: HTTP {status} {_first_line(reason)}"
    if status in (502, 503, 504):
        return ApiNotServing(message, retry_after=retry_after)
    if status == 429:
        return ApiThrottled(message, retry_after=retry_after)
    if 500 <= status <= 599:
        return RetryableError(message, retry_after=retry_after)
    return PermanentError(message)

"""Kubernetes client errors turned into the project's own, for every Kubernetes adapter.

429, 5xx, timeouts and connection errors become ``RetryableError``; other 4xx become
``PermanentError``; both chained with ``from``. Messages name what was done, the HTTP status and
reason (its first line) only, never a request or response body: pods' env may hold secrets.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from workers.adapters.retry import retry_after_seconds
from workers.core.errors import CIAutoscalerError, PermanentError, RetryableError

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
        raise status_error(what, err.status or 0, err.reason,
                           retry_after=retry_after_seconds((err.headers or {}).get("Retry-After"))
                           ) from err
    except urllib3.exceptions.HTTPError as err:  # refused, reset, timed out
        retried = isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason
        cause = err.reason if retried else err  # what made urllib3 give up retrying
        raise RetryableError(f"{what} failed: {type(cause).__name__}") from err


def status_error(what: str, status: int, reason: str | None, *,
                 retry_after: float | None = None) -> CIAutoscalerError:
    """The error for an HTTP status (also as a watch's ERROR event reports it)."""
    reason = (reason or "no reason").splitlines()[0]
    message = f"{what} failed: HTTP {status} {reason}"
    if status == 429 or 500 <= status <= 599:
        return RetryableError(message, retry_after=retry_after)
    return PermanentError(message)

"""The project's own exceptions; adapters translate library errors into these."""


class CIAutoscalerError(Exception):
    """Base of every error this project raises on purpose."""


class RetryableError(CIAutoscalerError):
    """A call failed in a way that may succeed later (timeout, 5xx, 429, connection refused).
    `retry_after` is the wait in seconds the other side asked for (a Retry-After header).
    `in_call` False: not worth repeating within the call (workers.adapters.retry), only later,
    when something else has changed (the caller's own retries or re-drives)."""

    in_call = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RetryableError):
    """The other side is not serving at all: no connection, or 503 (Jenkins starting or
    restarting answers every URL so while it loads). Nothing can be learnt from it meanwhile;
    not a statement about the object asked for."""


class Overloaded(RetryableError):
    """The other side is up but cannot keep up: a call it took got no answer in time (a read
    timeout), or it asked us to slow down (429). More calls now only add to its load; agents
    still connect to it, so it is not `Unavailable`."""


class CredentialsRefused(CIAutoscalerError):
    """The other side refused our credentials (a token revoked, rotated, expired): a property
    of the installation, not of the object asked for, counted as its own kind of error
    (`unauthorized` in ci_autoscaler_errors_total), whether the work waits for it
    (`Unauthorized`, Jenkins) or the pass ends (a GitLab API token refused)."""


class Unauthorized(RetryableError, CredentialsRefused):
    """The other side does not accept our credentials (Jenkins' 401 "Invalid password/token
    for user"; a 403 to a call Jenkins took as anonymous; an address that is not Jenkins',
    answering 404 or HTML where Jenkins never does: workers.adapters.jenkins): a property of
    the installation, not of the object asked for. An operator
    rotating the API token, or an admin revoking it, fixes it in minutes, so the work waits
    for it (RQ's retries, then the reconcile pass's restart of stalled builds) instead of
    failing for good. Not retried within a call: every call gets the same answer until the
    token is fixed. Not `Unavailable`: agents still connect, with their own secrets."""


class PermanentError(CIAutoscalerError):
    """A call failed in a way that retrying will not fix (a 4xx, an object that is not ours)."""


class PermissionMissing(PermanentError):
    """Jenkins refused a call because our user lacks a permission, which Jenkins named (a 403
    with X-Required-Permission: workers.adapters.jenkins_permissions). Not every 403 is one: a
    proxy's or a WAF's 403 names no permission, and is a plain PermanentError."""


class NotOurs(PermanentError):
    """An object under the name of one of ours that we did not make (another installation's,
    or a person's): never used, never deleted."""


class NotReadBack(CIAutoscalerError):
    """A lookup among a job's runs could not read back to the build's trigger (more runs
    since than it reads, or a trigger time unknown): the build's run may be among those not
    read, so its absence proves nothing (Jenkins.find_queue_item's `whole`)."""


class InvalidPayload(CIAutoscalerError):
    """A webhook body that cannot be understood; the reason is safe to send back."""


class ConfigError(CIAutoscalerError):
    """A configuration file or variable that is refused; names the field and the reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def shown(err: BaseException, limit: int = 300) -> str:
    """What may be shown of an error in a log field, in Redis or on the status page: our own
    errors' messages name the call and the HTTP status only (the adapters never put a body, a
    token or a secret in them); another exception's text may hold anything (a library's error
    can quote a request, a bug's KeyError a value), so only its type is given."""
    if not isinstance(err, CIAutoscalerError):
        return type(err).__name__
    return f"{type(err).__name__}: {err}"[:limit]

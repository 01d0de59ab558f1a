"""The text of a job's failure as RQ keeps it (the job's `exc_info` and its failure Result in
Redis, which `rq info`, RQ's dashboard and anyone reading Redis see) and as the worker logs
it: the traceback, with every exception of its chain, but no response page and no secret.

Our own errors name the operation and the status only (workers.adapters.jenkins), but they are
raised `from` python-jenkins' JenkinsException, whose message for a 401, 403 or 500 is
"Error in request. Possibly authentication failed [403]: Forbidden" followed by the whole page
answered (python-jenkins 1.8 Jenkins.jenkins_request: `msg += '\\n' + e.response.text`): a
proxy's sign-in form with its session and CSRF tokens, Jenkins' own page with its crumb
(lib/layout/layout.jelly's data-crumb-value), an error page quoting the URL asked. RQ formats
the whole chain (traceback.format_exception), so a job failed for good kept that page in Redis
and in the worker's log. Such a message keeps its first line here; and the text is redacted
(core.redaction): the process's secrets, a URL's user:password@, token-like words.
"""

import traceback
from collections.abc import Iterable
from types import TracebackType

from workers.core.redaction import redact

BODY_NOT_SHOWN = " [the page answered is not shown]"
# Modules whose exceptions carry an HTTP answer's body after their first line
_BODY_AFTER_FIRST_LINE = ("jenkins",)


def _cut(shown: traceback.TracebackException) -> None:
    """Each exception of the chain whose message holds a page: its first line only."""
    seen: set[int] = set()
    stack = [shown]
    while stack:
        one = stack.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        module = (getattr(one, "exc_type", None) or type(None)).__module__.split(".")[0]
        text = getattr(one, "_str", None)
        if module in _BODY_AFTER_FIRST_LINE and isinstance(text, str) and "\n" in text:
            one._str = text.split("\n", 1)[0] + BODY_NOT_SHOWN
        stack.extend(e for e in (one.__cause__, one.__context__) if e is not None)


def failure_text(exc_info: tuple[type[BaseException] | None, BaseException | None,
                                 TracebackType | None],
                 secrets: Iterable[str] = ()) -> str:
    """RQ's text of a job's failure (rq.job_lifecycle.format_exc_info: the traceback of the
    whole chain), without a page answered, redacted."""
    kind, error, trace = exc_info
    if error is None:
        return redact("".join(traceback.format_exception(*exc_info)), secrets)
    shown = traceback.TracebackException(type(error), error, trace, compact=True)
    _cut(shown)
    return redact("".join(shown.format()), secrets)

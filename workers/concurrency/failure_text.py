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
and in the worker's log. Such a message keeps its first line here (python-gitlab's and the
Kubernetes client's the same: _kept); and the text is redacted (core.redaction): the process's
secrets, a URL's user:password@, token-like words.
"""

import re
import traceback
from collections.abc import Iterable
from types import TracebackType

from workers.core.redaction import cut, redact

BODY_NOT_SHOWN = " [the page answered is not shown]"
# The most of an outside library's message kept (a cut one)
KEPT_CHARS = 300


def _kept(module: str, text: str) -> str:
    """What is kept of the message of an exception of `module`'s: an HTTP client library's
    (whose message may hold the answer's page or headers) without them.
    - python-jenkins: the page after its first line (above).
    - python-gitlab: "<status>: <message>", where the message is the whole body answered when
      it is no JSON (gitlab.client.Gitlab.http_request: `error_message = result.content`): a
      proxy's page, on one line. Its status only is kept; our own error, raised from it, says GitLab's
      message (workers.adapters.gitlab: an HTML page's title).
    - kubernetes: ApiException.__str__ adds "HTTP response headers: ..." (an auth proxy's
      Set-Cookie) and "HTTP response body: ..." after its status and reason; our own error
      says the Status's message (workers.adapters.kube_errors).
    - requests, urllib3: one line, naming the URL asked (redacted) and the cause at its end.
    A message of one line, nothing cut off it, is kept whole: capped at KEPT_CHARS, a
    ConnectionError's "Connection refused" after a Jenkins API URL's tree= query was lost
    (and a page said not shown where none was answered)."""
    if module == "kubernetes":
        kept = text.split("\nHTTP response headers:", 1)[0].split("\nHTTP response body:", 1)[0]
    elif module == "gitlab" and re.match(r"[0-9]{3}: ", text):
        kept = text[:3]  # its status (GitlabError.__str__), not the page after it
    elif module in ("jenkins", "gitlab", "requests", "urllib3"):
        kept = text.split("\n", 1)[0]
    else:
        return text
    kept = kept.rstrip("\n")
    if kept == text.rstrip("\n"):
        return text
    return cut(kept, KEPT_CHARS) + BODY_NOT_SHOWN


def _cut(shown: traceback.TracebackException) -> None:
    """Each exception of the chain: what _kept keeps of its message."""
    seen: set[int] = set()
    stack = [shown]
    while stack:
        one = stack.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        module = (getattr(one, "exc_type", None) or type(None)).__module__.split(".")[0]
        text = getattr(one, "_str", None)
        if isinstance(text, str):
            one._str = _kept(module, text)
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


def last_error(exc_info: tuple[type[BaseException] | None, BaseException | None,
                               TracebackType | None],
               secrets: Iterable[str] = ()) -> str:
    """The error a log line names (workers.telemetry.logs): the last exception's type and
    what _kept keeps of its message, on one line, redacted (`secrets` too: the process's).
    Its traceback's last line was
    the last line of its message: a page's "</html>", an ApiException's "HTTP response body:
    ..." (its status and reason left out)."""
    kind, error, _trace = exc_info
    if error is None:
        return kind.__name__ if kind is not None else ""
    shown = traceback.TracebackException(type(error), error, None, compact=True)
    _cut(shown)
    shown.__cause__ = shown.__context__ = None
    return redact(" ".join("".join(shown.format_exception_only()).split("\n")).strip(), secrets)

"""gunicorn's log lines about a request, without the request's query: the Jenkins Notification
plugin's token travels in it (`/webhooks/jenkins?token=...`, README).

gunicorn logs a request line it refuses, quoted whole ("Invalid request from ip=...: Invalid
HTTP request line: 'POST /webhooks/jenkins?token=... HTTP/1.1'", gunicorn.workers.base
.handle_error): a token the plugin sends with a space, a tab or a non-ASCII character in it
(Java's URL sends it as typed) made that line, and put the token in the web's log. A space
splits the line: what follows it is quoted as the "HTTP Version". An exception out of the app
is logged with the request's URI ("Error handling request POST /webhooks/jenkins?token=...").
A filter on gunicorn's error logger keeps the method and path and hides the rest.

gunicorn keeps no access log here (service/gunicorn.conf.py), but an operator may turn one on
as gunicorn lets them (GUNICORN_CMD_ARGS="--access-logfile -" overrides the config file):
its request line and query showed the plugin's token, and a format naming a token header or
the environ (%({x-gitlab-token}i)s, %({query_string}e)s) the GitLab or Jenkins token.
The web's worker (service.http_worker) has its logger show the path and hide those.
A token in the path itself (put in a hook's URL, `/webhooks/gitlab/<token>`, or the '?' pasted
encoded, `/webhooks/jenkins%3Ftoken=...`, which RAW_URI keeps so) has no word to tell it by:
every atom and URI is redacted with the settings' secrets and this request's token headers
too, as the app's own log of a 404 is (service.edge.log_rejection).
"""

import json
import logging
import re
from typing import Any

from gunicorn import util

from workers.core.redaction import redact

HIDDEN = "[not shown: a query may hold a token]"
HIDDEN_TOKEN = "[not shown: a token]"
# str() of gunicorn.http.errors.InvalidRequestLine and InvalidHTTPVersion, as handle_error
# puts them after "Invalid request from ip=<address>: "
_REQUEST_LINE = re.compile(r"(Invalid HTTP request line: )(.)([^?]*)\?.*$", re.S)
_VERSION = re.compile(r"(Invalid HTTP Version: ).*$", re.S)
# str() of InvalidHeader and InvalidHeaderName: a header line without its ':' is quoted whole
# (gunicorn.http.message: `raise InvalidHeader(curr)`), a name with a space up to the ':'
# (InvalidHeaderName): "X-Gitlab-Token <token>" put the token in the log. What follows a token
# header's name is hidden.
_HEADER_LINE = re.compile(r"(Invalid HTTP [Hh]eader(?: name)?: (['\"])(?:%s))[^\w-].*?(\2)$"
                          % "|".join(re.escape(name) for name in (
                              "x-gitlab-token", "x-jenkins-token", "authorization")),
                          re.S | re.I)


# The request headers that carry a token (X-Gitlab-Token, X-Jenkins-Token, and a proxy's or a
# client's Authorization), as gunicorn's access-log atoms name them: {name}i for the header,
# {http_name}e for the environ's copy.
_TOKEN_HEADERS = ("x-gitlab-token", "x-jenkins-token", "authorization")
_HIDDEN_ATOMS = {atom for name in _TOKEN_HEADERS for atom in (
    f"{{{name}}}i", "{http_%s}e" % name.replace("-", "_"))}
_TOKEN_ENVIRON = tuple("HTTP_" + name.upper().replace("-", "_") for name in _TOKEN_HEADERS)
# A query's '?', as typed or percent-encoded (RAW_URI is the URI as sent).
_QUERY = re.compile(r"\?|%3f", re.I)


def _uri(uri: object, secrets: tuple[str, ...] = ()) -> str:
    """The URI's path, redacted (a token typed without its '?': `/webhooks/jenkins&token=`,
    core.redaction; a secret of `secrets`), and no query."""
    path, *query = _QUERY.split(str(uri), 1)
    return redact(path, secrets) + ("?" + HIDDEN if query else "")


def hidden_atoms(atoms: dict[str, Any], environ: dict[str, Any],
                 secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """gunicorn's access-log atoms (glogging.Logger.atoms) without the query or a token header
    (see the module); the path stays, redacted, and every atom is, with `secrets` and this
    request's token headers (a Referer, an environ's object quoting the URL)."""
    secrets = (*secrets, *(str(environ[name]) for name in _TOKEN_ENVIRON if name in environ))
    atoms["r"] = " ".join((str(environ.get("REQUEST_METHOD")),
                           _uri(environ.get("RAW_URI", ""), secrets),
                           str(environ.get("SERVER_PROTOCOL"))))
    for name in ("q", "{query_string}e"):
        atoms[name] = HIDDEN if atoms.get(name) else atoms.get(name)
    for name in ("U", "{path_info}e", "{raw_uri}e"):
        atoms[name] = _uri(atoms.get(name) or "", secrets)
    for name in _HIDDEN_ATOMS & atoms.keys():
        atoms[name] = HIDDEN_TOKEN
    return {name: redact(value, secrets) if isinstance(value, str) else value
            for name, value in atoms.items()}


class QueryHidden(logging.Filter):
    """The filter of gunicorn's error logger (see the module), with the settings' `secrets`
    once the app is loaded (hide_queries)."""

    secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid request from ip="):
            text = record.getMessage()
            text = _REQUEST_LINE.sub(lambda m: f"{m[1]}{m[2]}{m[3]}?{HIDDEN}{m[2]}", text)
            text = _HEADER_LINE.sub(rf"\g<1> {HIDDEN_TOKEN}\g<3>", text)
            record.msg = redact(_VERSION.sub(rf"\g<1>{HIDDEN}", text), self.secrets)
            record.args = ()
        elif isinstance(record.msg, str) and record.msg.startswith("Error handling request") \
                and isinstance(record.args, tuple) and record.args:
            record.args = (*record.args[:-1], _uri(record.args[-1], self.secrets))
        return True


def hide_queries(log: Any, secrets: tuple[str, ...] | None = None) -> None:
    """gunicorn's logger (glogging.Logger, statsd's, or an operator's --logger-class) without
    queries, once: QueryHidden on its error logger, its access log's atoms through
    hidden_atoms (an attribute of this instance, whatever its class); `secrets` (the
    settings', known once the worker loaded the app) redacted in both from then on."""
    [hidden] = [f for f in log.error_log.filters if isinstance(f, QueryHidden)] or [QueryHidden()]
    log.error_log.addFilter(hidden)  # once: logging.Filterer.addFilter adds no filter twice
    if not getattr(log.atoms, "hides_queries", False):
        atoms = log.atoms

        def hiding(resp: Any, req: Any, environ: dict[str, Any], request_time: Any
                   ) -> dict[str, Any]:
            return hidden_atoms(atoms(resp, req, environ, request_time), environ,
                                hidden.secrets)

        hiding.hides_queries = True  # type: ignore[attr-defined]
        log.atoms = hiding
    if secrets is not None:
        hidden.secrets = secrets


# gunicorn's message for a request it refuses (gunicorn.workers.base.handle_error) quotes what
# the client sent: the request line with its query (the plugin's token), a header line it could
# not read (a token header's value). Its answer keeps the words before the first quote, ':' or
# '(' only: "Invalid HTTP Version", "Invalid HTTP header name", "Request Line is too large".
_MESSAGE_HEAD = re.compile(r"[^'\":(]*")


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's answer to a request it cannot take (util.write_error, which handle_error and
    the web's worker call), as every other answer of the web: a JSON body with the reason, not
    an HTML page (DESIGN.md: bad input is a 4xx with a JSON reason), and without what the
    client sent (see _MESSAGE_HEAD)."""
    words = (_MESSAGE_HEAD.match(mesg or "")[0].strip() or reason)[:200]
    body = json.dumps({"error": reason.lower().replace(" ", "_"),
                       "reason": f"{words}: gunicorn cannot take this request"}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)

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
"""

import logging
import re
from typing import Any

from workers.core.redaction import redact

HIDDEN = "[not shown: a query may hold a token]"
# str() of gunicorn.http.errors.InvalidRequestLine and InvalidHTTPVersion, as handle_error
# puts them after "Invalid request from ip=<address>: "
_REQUEST_LINE = re.compile(r"(Invalid HTTP request line: )(.)([^?]*)\?.*$", re.S)
_VERSION = re.compile(r"(Invalid HTTP Version: ).*$", re.S)


# The request headers that carry a token (X-Gitlab-Token, X-Jenkins-Token, and a proxy's or a
# client's Authorization), as gunicorn's access-log atoms name them: {name}i for the header,
# {http_name}e for the environ's copy.
_TOKEN_HEADERS = ("x-gitlab-token", "x-jenkins-token", "authorization")
_HIDDEN_ATOMS = {atom for name in _TOKEN_HEADERS for atom in (
    f"{{{name}}}i", "{http_%s}e" % name.replace("-", "_"))}


def _uri(uri: object) -> str:
    """The URI's path, redacted (a token typed without its '?': `/webhooks/jenkins&token=`,
    core.redaction), and no query."""
    return redact(str(uri).split("?", 1)[0]) + ("?" + HIDDEN if "?" in str(uri) else "")


def hidden_atoms(atoms: dict[str, Any], environ: dict[str, Any]) -> dict[str, Any]:
    """gunicorn's access-log atoms (glogging.Logger.atoms) without the query or a token header
    (see the module); the path stays, redacted."""
    atoms["r"] = " ".join((str(environ.get("REQUEST_METHOD")), _uri(environ.get("RAW_URI", "")),
                           str(environ.get("SERVER_PROTOCOL"))))
    for name in ("q", "{query_string}e"):
        atoms[name] = HIDDEN if atoms.get(name) else atoms.get(name)
    for name in ("U", "{path_info}e", "{raw_uri}e"):
        atoms[name] = _uri(atoms.get(name) or "")
    for name in _HIDDEN_ATOMS & atoms.keys():
        atoms[name] = "[not shown: a token]"
    return atoms


class QueryHidden(logging.Filter):
    """The filter of gunicorn's error logger (see the module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid request from ip="):
            text = record.getMessage()
            text = _REQUEST_LINE.sub(lambda m: f"{m[1]}{m[2]}{m[3]}?{HIDDEN}{m[2]}", text)
            record.msg, record.args = _VERSION.sub(rf"\g<1>{HIDDEN}", text), ()
        elif isinstance(record.msg, str) and record.msg.startswith("Error handling request") \
                and isinstance(record.args, tuple) and record.args:
            record.args = (*record.args[:-1], _uri(record.args[-1]))
        return True


def hide_queries(log: Any) -> None:
    """gunicorn's logger (glogging.Logger, statsd's, or an operator's --logger-class) without
    queries, once: QueryHidden on its error logger, its access log's atoms through
    hidden_atoms (an attribute of this instance, whatever its class)."""
    if not any(isinstance(f, QueryHidden) for f in log.error_log.filters):
        log.error_log.addFilter(QueryHidden())
    if getattr(log.atoms, "hides_queries", False):
        return
    atoms = log.atoms

    def hiding(resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        return hidden_atoms(atoms(resp, req, environ, request_time), environ)

    hiding.hides_queries = True  # type: ignore[attr-defined]
    log.atoms = hiding

"""gunicorn's log lines about a request, without the request's query: the Jenkins Notification
plugin's token travels in it (`/webhooks/jenkins?token=...`, README).

gunicorn logs a request line it refuses, quoted whole ("Invalid request from ip=...: Invalid
HTTP request line: 'POST /webhooks/jenkins?token=... HTTP/1.1'", gunicorn.workers.base
.handle_error): a token the plugin sends with a space, a tab or a non-ASCII character in it
(Java's URL sends it as typed) made that line, and put the token in the web's log. A space
splits the line: what follows it is quoted as the "HTTP Version". An exception out of the app
is logged with the request's URI ("Error handling request POST /webhooks/jenkins?token=...").
A filter on gunicorn's error logger keeps the method and path and hides the rest.
"""

import logging
import re

HIDDEN = "[not shown: a query may hold a token]"
# str() of gunicorn.http.errors.InvalidRequestLine and InvalidHTTPVersion, as handle_error
# puts them after "Invalid request from ip=<address>: "
_REQUEST_LINE = re.compile(r"(Invalid HTTP request line: )(.)([^?]*)\?.*$", re.S)
_VERSION = re.compile(r"(Invalid HTTP Version: ).*$", re.S)


def _uri(uri: object) -> str:
    return str(uri).split("?", 1)[0] + ("?" + HIDDEN if "?" in str(uri) else "")


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


def hide_queries(logger: logging.Logger) -> None:
    """QueryHidden on this logger (gunicorn's "gunicorn.error"), once."""
    if not any(isinstance(f, QueryHidden) for f in logger.filters):
        logger.addFilter(QueryHidden())

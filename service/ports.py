"""What each port serves when the web has an admin port (CI_AUTOSCALER_ADMIN_BIND): the public
port takes the webhooks and the health checks and answers 404 for /metrics and /status; the
admin port takes /metrics, /status and the health checks and answers 404 for the rest.

A request's port is the one of the listener that accepted it: gunicorn sets SERVER_PORT from
the listening socket's address (gunicorn.http.wsgi.create, with service.http_worker passing
``listener.getsockname()``), never from the Host header, so a client cannot name the other
port. The 404 is the one Flask gives for an unknown path: the public port does not tell that
an admin port exists. A path is judged as Flask's router reads it (`routed`): `//metrics` was
served the metrics on the public port, which werkzeug matches as `/metrics`.
"""

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import NotFound

ADMIN_PATHS = frozenset({"/metrics", "/status"})
BOTH_PATHS = frozenset({"/healthz", "/readyz"})  # the kubelet's probes, on either port
# The bytes of the app's own 404 (service.app's error handler, through Flask's jsonify).
_NOT_FOUND = (json.dumps({"error": "not_found", "reason": NotFound.description},
                         separators=(",", ":"), sort_keys=True) + "\n").encode()


def routed(path: str) -> str:
    """The path Flask's router matches: werkzeug keeps one of a path's leading slashes
    (sansio.request.Request.path, routing.Map.bind_to_environ) and redirects a path with
    slashes repeated inside to the one with them merged (routing.matcher, merge_slashes)."""
    return re.sub("/{2,}", "/", "/" + path.lstrip("/"))


class PortRoles:
    """WSGI middleware, outermost: a path on the wrong port is answered 404 here."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, admin_port: int):
        self.app = app
        self.admin_port = str(admin_port)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        path = routed(environ.get("PATH_INFO", ""))
        on_admin = environ.get("SERVER_PORT") == self.admin_port
        if path in BOTH_PATHS or (path in ADMIN_PATHS) == on_admin:
            return self.app(environ, start_response)
        start_response("404 NOT FOUND", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(_NOT_FOUND)))])
        return [_NOT_FOUND]

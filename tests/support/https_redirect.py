"""A reverse proxy's front door that sends plain-http clients on to its https address, as
ingress-nginx does for an Ingress with TLS (its docs, "Server-side HTTPS enforcement through
redirect": "a 308 Permanent Redirect response", `ssl-redirect` on by default), or a plain nginx
`return 301 https://$host$request_uri;`: the same path and query, on another address.

Here the "https" address is the Jenkins fake's own (plain http on another port of the same
host): what the client is asked to do is the same, follow the move to the same page."""

from __future__ import annotations

import threading
import time

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response


class HttpsRedirect:
    """Answers every request `status` with a Location of `target` + the request's path and
    query, after `delay_seconds` (a slow front: a proxy under load, or far away); a context
    manager, listening on 127.0.0.1 while entered."""

    def __init__(self, target: str, status: int = 308) -> None:
        self.target = target.rstrip("/")
        self.status = status
        self.asked = 0
        self.delay_seconds = 0.0
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="https-redirect")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @Request.application
    def _app(self, request: Request) -> Response:
        self.asked += 1
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        query = request.query_string.decode()
        return Response("", status=self.status, headers={
            "Location": f"{self.target}{request.path}" + (f"?{query}" if query else "")})

    def __enter__(self) -> HttpsRedirect:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

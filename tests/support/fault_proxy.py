"""An HTTP proxy that makes a server unreliable: it answers a share of the requests with 500 or
429 (with Retry-After), for chaos tests. Seeded, so a run is repeatable.

Half of the failed writes (POST, PUT, PATCH, DELETE) fail *after* the server handled them, as
when an answer is lost on its way back: the client sees an error for a change that was made.
Watches (``?watch=true``) stream through untouched. A latency can be added to every other
request, and a test can hold one request until it lets it go (``hold_next``). The proxy also
records, as an independent observer, the Kubernetes pods that were really created (201) and
deleted (200).

aiohttp runs on its own event loop in a background thread, as kmock's server does.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import Counter
from typing import Any

import aiohttp
import aiohttp.web

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length",
               "content-encoding", "upgrade", "proxy-connection", "te", "trailer"}
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}
HOLD_LIMIT_SECONDS = 60  # a request held by `hold_next` is answered 502 if never released


class FaultProxy:
    def __init__(self, upstream: str, *, ratio: float, seed: int, kubernetes: bool,
                 latency_seconds: float = 0.0):
        self.upstream = upstream.rstrip("/")
        self.ratio = ratio
        # Every request but a watch waits this long before it is forwarded: a real API server
        # answers in tens of milliseconds, not at once (issue 19's benchmark: 30 ms).
        self.latency_seconds = latency_seconds
        self._holds: list[tuple[str, str, threading.Event, threading.Event, bool]] = []
        # fail_next: [method, prefix, status, left, after, body_has]
        self._scripted: list[list[Any]] = []
        self.kubernetes = kubernetes
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self.pods_created: list[str] = []
        self.pods_deleted: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fault-proxy")
        self.url = ""

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_ratio(self, ratio: float) -> None:
        with self._lock:
            self.ratio = ratio

    def fail_next(self, method: str, path_prefix: str, *, status: int = 500, times: int = 1,
                  after: bool = False, body_has: bytes = b"") -> None:
        """Answer the next `times` `method` requests whose path starts with `path_prefix` with
        `status`, whatever the ratio draws; with `after`, once the server has handled them
        (the change made, its answer lost). `body_has`: only those whose body holds it (an
        admission webhook selecting objects by label: only their creates fail)."""
        with self._lock:
            self._scripted.append([method, path_prefix, status, times, after, body_has])

    def hold_next(self, method: str, path_prefix: str, *, answer: bool = False
                  ) -> tuple[threading.Event, threading.Event]:
        """Hold the next `method` request whose path starts with `path_prefix` before it is
        forwarded, until the test sets the second event returned; the first is set when that
        request has arrived. Other requests go on meanwhile. With `answer`, the request is
        forwarded at once and its answer held instead (a slow way back: what the server
        answered is of the moment it handled it); the first event is set once the server has
        answered."""
        arrived, release = threading.Event(), threading.Event()
        with self._lock:
            self._holds.append((method, path_prefix, arrived, release, answer))
        return arrived, release

    def _held(self, request: aiohttp.web.BaseRequest, *, answer: bool
              ) -> threading.Event | None:
        with self._lock:
            for hold in self._holds:
                if request.method == hold[0] and request.path.startswith(hold[1]) \
                        and hold[4] == answer:
                    self._holds.remove(hold)
                    hold[2].set()
                    return hold[3]
        return None

    async def _wait(self, release: threading.Event) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            None, release.wait, HOLD_LIMIT_SECONDS)

    # ---- the server ------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        server = aiohttp.web.Server(self._handle)
        self._runner = aiohttp.web.ServerRunner(server, shutdown_timeout=0.5)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    def _draw(self, request: aiohttp.web.BaseRequest, body: bytes
              ) -> tuple[int | None, bool]:
        """(status to fail with or None, whether to fail after forwarding)."""
        if request.query.get("watch") in ("true", "1"):
            return None, False
        with self._lock:
            self.requests += 1
            for script in self._scripted:
                if request.method == script[0] and request.path.startswith(script[1]) \
                        and script[5] in body:
                    script[3] -= 1
                    if script[3] <= 0:
                        self._scripted.remove(script)
                    return script[2], script[4]
            if self._rng.random() >= self.ratio:
                return None, False
            status = self._rng.choice((500, 429))
            after = request.method in _WRITES and status == 500 and self._rng.random() < 0.5
            self.faults[f"{status}{' after the change' if after else ''}"] += 1
            return status, after

    async def _handle(self, request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await request.read()
        status, after = self._draw(request, body)
        release = self._held(request, answer=False)
        if release is not None and not await self._wait(release):
            return self._error(502)
        if self.latency_seconds and request.query.get("watch") not in ("true", "1"):
            await asyncio.sleep(self.latency_seconds)
        if status is not None and not after:
            return self._error(status)
        # The Host header goes through as a reverse proxy keeps it: the server's redirects
        # then lead back through the proxy.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            upstream = await self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body,
                allow_redirects=False)
        except aiohttp.ClientError:
            return self._error(502)
        async with upstream:
            self._observe(request, body, upstream.status)
            if status is not None:
                await upstream.read()
                return self._error(status)
            release = self._held(request, answer=True)
            held = await upstream.read() if release is not None else None
            if release is not None and not await self._wait(release):
                return self._error(502)  # the answer taken above, given back when let go
            response = aiohttp.web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "host"})
            await response.prepare(request)
            if held is not None:
                await response.write(held)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response

    def _observe(self, request: aiohttp.web.BaseRequest, body: bytes, status: int) -> None:
        if not self.kubernetes or "/pods" not in request.path:
            return
        with self._lock:
            if request.method == "POST" and status in (200, 201):
                self.pods_created.append(json.loads(body)["metadata"]["name"])
            elif request.method == "DELETE" and status == 200:
                self.pods_deleted.append(request.path.rsplit("/", 1)[-1])

    def _error(self, status: int) -> aiohttp.web.Response:
        with self._lock:  # a quarter of the 429s say how long to wait, as API servers may
            headers = {"Retry-After": "1"} if status == 429 and self._rng.random() < 0.25 else {}
        reason = {500: "InternalError", 429: "TooManyRequests", 502: "BadGateway"}[status]
        if self.kubernetes:
            body: Any = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Failure", "message": "injected by the chaos proxy",
                         "reason": reason, "code": status}
            return aiohttp.web.json_response(body, status=status, headers=headers)
        return aiohttp.web.Response(
            status=status, headers=headers, content_type="text/html",
            text=f"<html><body><h2>HTTP ERROR {status} {reason}</h2></body></html>")

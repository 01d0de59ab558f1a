"""A job that fails for good keeps no page Jenkins' address answered, nor a secret, in what RQ
stores in Redis (the job's exc_info, its failure Result) or in the worker's log
(workers.concurrency.failure_text): python-jenkins puts the whole page of a 401, 403 or 500
into its exception's message, which our errors are raised from."""

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rq import Queue

from tests.support import jobs as test_jobs
from workers.concurrency.pool_worker import PoolWorker
from workers.engine import jobs
from workers.telemetry.metrics import EngineMetrics

CRUMB = "crumb-7d3a51b0e2"
CSRF = "csrf-session-91c4ab"
URL_TOKEN = "url-token-3f88e0"
# A front's sign-in page (oauth2-proxy's 403 SignInPage has a CSRF form field), with
# Jenkins' crumb as its layout.jelly pages carry it, quoting the URL asked with a ?token=,
# and a debug page's echo of the credential sent
PAGE = (f'<html><head data-crumb-header="Jenkins-Crumb" data-crumb-value="{CRUMB}"></head>'
        f'<body><form><input type="hidden" name="csrf" value="{CSRF}"></form>'
        f'You asked https://jenkins.example/computer/api/json?token={URL_TOKEN} as '
        f'ci:{test_jobs.JENKINS_TOKEN}</body></html>').encode()
NEVER = (CRUMB, CSRF, URL_TOKEN, test_jobs.JENKINS_TOKEN)


class SignInFront(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def front():
    server = ThreadingHTTPServer(("127.0.0.1", 0), SignInFront)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_a_failed_jobs_traceback_keeps_no_page_answered_nor_secret(redis_conn, front, caplog):
    queue = Queue("failure-text", connection=redis_conn)
    job = queue.enqueue("tests.support.jobs.jenkins_nodes_at", url=front)
    with caplog.at_level(logging.DEBUG):
        PoolWorker([queue], connection=redis_conn, concurrency=1,
                   secrets=(test_jobs.JENKINS_TOKEN,)).work(burst=True)
    assert queue.failed_job_registry.get_job_ids() == [job.id]
    job.refresh()
    stored = job.latest_result().exc_string
    # what happened stays: our error and python-jenkins' first line, status and all
    assert "Jenkins answered HTTP 403 to" in stored
    assert "Possibly authentication failed [403]" in stored
    # and nothing of the page, in Redis (every key's every value) or in the worker's log
    everything = [stored, caplog.text]
    for key in redis_conn.keys("*"):
        kind = redis_conn.type(key)
        if kind == b"hash":
            everything += [v.decode("utf-8", "replace") for v in redis_conn.hvals(key)]
        elif kind == b"string":
            everything.append(redis_conn.get(key).decode("utf-8", "replace"))
        elif kind == b"stream":
            everything += [str(entry) for entry in redis_conn.xrange(key)]
    assert "exception raised while executing" in caplog.text  # RQ's error line is logged
    for secret in NEVER:
        assert not [text for text in everything if secret in text], secret


def test_a_library_error_no_adapter_translated_is_logged_without_its_headers(redis_conn, caplog):
    """The failure handler's "job failed" line (workers.engine.jobs) named a raw library
    error by its whole text: the Kubernetes client's carries the answer's headers and body."""
    queue = Queue("failure-text-raw", connection=redis_conn)
    queue.enqueue("tests.support.jobs.kubernetes_refusal", cookie="session-cookie-6a0e19")
    worker = PoolWorker([queue], connection=redis_conn, concurrency=1)
    worker.push_exc_handler(jobs.failure_handler(EngineMetrics(redis_conn, prefix="ft:")))
    with caplog.at_level(logging.INFO):
        worker.work(burst=True)
    [failed] = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert "(422)" in failed.error and "Unprocessable Entity" in failed.error
    assert "Set-Cookie" not in failed.error and "denied by a webhook" not in failed.error

"""No secret is written to Redis when a provision fails, through the real path (a GitLab push
to the webhook, the worker's mover, an RQ SimpleWorker with the production failure handler, a
real redis-server, kmock over HTTP and the Jenkins fake). RQ keeps each failed attempt's whole
traceback, chained causes included (rq.job_lifecycle.format_exc_info, in the job's Result and
the failed registry), where tools such as rq-dashboard show it; python-jenkins puts Jenkins'
response body into a 401/403/500's JenkinsException (jenkins/__init__.py jenkins_open), which
our errors chain. Checked: the Jenkins API token, the agent's secret (read after the node was
registered), the webhook tokens. Jenkins' pages for these answers hold none of them (its
401 says "Invalid password/token for user: NAME"), so what RQ keeps holds none either.
"""

import pytest

from tests.integration.test_jenkins_token_refused import REFUSED
from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_placement_on_cluster import push
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN

# Jenkins' answer to an exception in a request (Stapler's oops page, core/src/main/resources/
# jenkins/model/Jenkins/oops.jelly): an HTML page with its id and, to an admin, the trace.
OOPS = ("<!DOCTYPE html><html><head><title>Jenkins</title></head><body><h1>Oops!</h1><p>A "
        "problem occurred while processing the request.</p><p>Logging ID=3b1f</p>"
        "<pre>java.lang.IllegalStateException: This build is not parameterized!</pre>"
        "</body></html>")


def _values(connection) -> list[bytes]:
    """Every key's name and value in the test's Redis database."""
    out: list[bytes] = []
    for key in connection.scan_iter(count=1000):
        out.append(key)
        kind = connection.type(key).decode()
        if kind == "string":
            out.append(connection.get(key) or b"")
        elif kind == "hash":
            for field, value in connection.hgetall(key).items():
                out += [field, value]
        elif kind == "list":
            out += connection.lrange(key, 0, -1)
        elif kind == "set":
            out += list(connection.smembers(key))
        elif kind == "zset":
            out += [member for member, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in connection.xrange(key):
                for field, value in fields.items():
                    out += [field, value]
    return out


# Jenkins' 403 for a job our user may not build names the permission (AccessDeniedException3
# .reportAsHeaders); one naming none is not Jenkins' (its build waits:
# test_jenkins_sign_in_redirect)
BUILD_DENIED = {"X-Required-Permission": "hudson.model.Item.Build"}


@pytest.mark.parametrize("status, body, retried", [
    (500, OOPS, False), (403, "ci-autoscaler is missing the Job/Build permission", False),
    (401, REFUSED, True)],  # our token refused: retried (workers.engine.jobs), RQ keeps no trace
    ids=["oops", "forbidden", "token-refused"])
def test_a_failed_trigger_leaves_no_secret_in_redis(app, jenkins_fake, status, body, retried):
    jenkins_fake.add_job("build", parameters=OURS)
    jenkins_fake.fail_next(status, times=100, path_prefix="/job/build/buildWithParameters",
                           body=body, headers=BUILD_DENIED if status == 403 else None)
    key = push(app.test_client(), 1)
    run_worker(app)

    state = app.extensions["ci_autoscaler"].state
    agent = state.get_build(key)["agent"]
    jobs = [state.queue.fetch_job(key.decode().removeprefix("rq:job:"))
            for key in state.redis.scan_iter(match="rq:job:*") if key.count(b":") == 2]
    failures = [result.exc_string for job in jobs if job is not None
                for result in job.results() if result.exc_string]
    if retried:
        assert state.queue.scheduled_job_registry.count == 1
    else:  # what is checked is there: the failure's trace, with Jenkins' answer chained
        assert [f for f in failures if "JenkinsException" in f]
    assert any(r.path == f"/computer/{agent}/jenkins-agent.jnlp" for r in jenkins_fake.requests)
    secrets = [jenkins_fake.token, GITLAB_TOKEN, JENKINS_TOKEN, jenkins_fake.jnlp_mac(agent)]
    stored = b"\n".join(_values(state.redis))
    for secret in secrets:
        assert secret.encode() not in stored
        # RQ keeps a Result's trace compressed (rq/results.py): read as RQ reads it
        assert all(secret not in failure for failure in failures)

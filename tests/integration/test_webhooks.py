"""The webhook edge on a real redis-server: verify, parse, dedupe, enqueue, answer."""

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import trimmed_body
from service.app import create_app
from tests.support.app import GITLAB_TOKEN, JENKINS_TOKEN, make_app, make_settings, spool_dir
from tests.support.payloads import EXAMPLE_CONFIG, fixture, fixture_bytes
from workers.core.errors import ConfigError
from workers.core.routing import AGENT_PARAMETER
from workers.engine.spool_drain import Drainer

PUSH = fixture_bytes("gitlab_push_real_lrz.json")


def gitlab(client, body=PUSH, *, event="Push Hook", token=GITLAB_TOKEN, **headers):
    headers = {"X-Gitlab-Event": event, "Content-Type": "application/json", **headers}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return client.post("/webhooks/gitlab", data=body, headers=headers)


def jenkins(client, payload, *, token=JENKINS_TOKEN):
    return client.post(f"/webhooks/jenkins?token={token}", json=payload)


def test_push_with_right_token_is_stored_in_redis_before_the_answer(client, stored, jobs):
    response = gitlab(client, **{"Idempotency-Key": "d-1"})
    assert response.status_code == 202
    assert response.json["status"] == "queued"
    assert stored() == 1  # in the intake when the answer left
    made = jobs()
    assert len(made) == 1
    assert made[0].func_name == "workers.tasks.provision_agent"
    assert made[0].kwargs["build"]["build_key"] == response.json["build_key"]


def test_same_delivery_five_times_queues_one_job(client, stored, jobs):
    answers = [gitlab(client, **{"Idempotency-Key": "same"}) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 200, 200, 200, 200]
    assert {a.json["status"] for a in answers[1:]} == {"duplicate"}
    assert stored() == 1
    assert len(jobs()) == 1


def test_event_uuid_dedupes_when_there_is_no_idempotency_key(client, jobs):
    for _ in range(3):
        gitlab(client, **{"X-Gitlab-Event-UUID": "u-1"})
    assert len(jobs()) == 1


def test_without_any_delivery_id_a_push_of_a_commit_in_flight_is_still_a_duplicate(
        client, stored, jobs):
    first, second = gitlab(client), gitlab(client)
    assert first.status_code == 202
    assert second.status_code == 200 and second.json["status"] == "duplicate"
    assert second.json["build_key"] == first.json["build_key"]
    assert stored() == 1 and len(jobs()) == 1


@pytest.mark.parametrize("token", [None, "", "wrong", GITLAB_TOKEN + "x"])
def test_wrong_token_is_401_and_nothing_is_queued(client, stored, redis_conn, token):
    response = gitlab(client, token=token)
    assert response.status_code == 401
    assert response.json["status"] == "unauthorized"
    assert stored() == 0
    assert redis_conn.dbsize() == 0


def test_token_is_checked_before_the_body_is_read(redis_url):
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    assert gitlab(client, b"{" * 4096, token="wrong").status_code == 401


def test_malformed_json_is_400_with_the_reason(client, stored):
    response = gitlab(client, b'{"ref": "refs/heads/main",')
    assert response.status_code == 400
    assert response.json["status"] == "invalid"
    assert "not valid JSON" in response.json["reason"]
    assert stored() == 0


def test_missing_field_is_400_naming_it(client):
    body = json.dumps({k: v for k, v in json.loads(PUSH).items() if k != "project"})
    response = gitlab(client, body)
    assert response.status_code == 400
    assert "project.path_with_namespace" in response.json["reason"]


def test_a_push_over_the_limit_is_queued_and_a_larger_body_than_gitlab_sends_is_413(
        redis_url, stored):
    """Past the limit, a push is read in pieces and trimmed to the fields read
    (service.trimmed_body): a real one can be that large, and GitLab never sends it again."""
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    response = gitlab(client, PUSH)  # the real push is ~3 KiB
    assert response.status_code == 202 and response.json["status"] == "queued", response.json
    assert stored() == 1
    # A Content-Length past GitLab's own 25 MB: not a GitLab delivery, nothing is read.
    response = client.post("/webhooks/gitlab", data=PUSH, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN},
        environ_overrides={"CONTENT_LENGTH": str(26 * 2**20)})
    assert response.status_code == 413
    assert response.json["error"] == "request_entity_too_large"
    # A notification whose fields read are past the limit is no plugin's: 413.
    big = {"name": "x" * 2048, "build": {"number": 1, "phase": "COMPLETED"}}
    assert jenkins(client, big).status_code == 413
    # Past the limit and no JSON object: 400 with the reason, as a small one (it was a 500)
    for body in (b"[" + b" " * 2048 + b"]", b'{"log": "' + b"x" * 2048):
        response = client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", data=body)
        assert response.status_code == 400 and "JSON" in response.json["reason"], body[:20]
        assert gitlab(client, body).status_code == 400


def busy_counts(client) -> dict[str, float]:
    """ci_autoscaler_webhooks_total{result="busy"} of this process, by source, as /metrics
    exports it: a push's 503 is counted under its event, a notification's under `other`."""
    text = client.get("/metrics").get_data(as_text=True)
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ci_autoscaler_webhooks_total" and \
                    sample.labels["result"] == "busy":
                source = sample.labels["source"]
                counts[source] = counts.get(source, 0.0) + sample.value
    return counts


def test_a_delivery_past_the_limit_while_two_others_are_read_is_503_busy_not_200(
        redis_url, stored):
    """Two bodies past the limit being read (by other threads: trimmed_body's slots taken
    here as theirs take them), a third valid push is read by nothing and stored nowhere: 503,
    as when nothing could store it. It was 200 ignored: GitLab showed the push delivered,
    never sent it again, and no one could press Resend for it."""
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    # counted, in a series that exists at 0 before the first (Prometheus' increase() reads
    # nothing of a series that appears at 1: CIWebhookBusy would miss a pod's first ones)
    before = busy_counts(client)
    assert set(before) == {"gitlab", "jenkins"}, before
    taken = [trimmed_body._reading.acquire(blocking=False)
             for _ in range(trimmed_body.OVERSIZED_READS)]
    try:
        assert all(taken)
        response = gitlab(client, PUSH, **{"Idempotency-Key": "busy-1"})
        assert (response.status_code, response.json["status"]) == (503, "busy"), response.json
        assert "being read" in response.json["reason"]
        # a merge request's event builds nothing: drained unread, 200 ignored, busy or not
        response = gitlab(client, fixture_bytes("gitlab_merge_request_open_real_lrz.json"),
                          event="Merge Request Hook")
        assert (response.status_code, response.json["status"]) == (200, "ignored"), response.json
        assert "does not start builds" in response.json["reason"]
        note = fixture("jenkins_notification_completed_unstable.json")
        note["build"]["log"] = "x" * 2048
        response = jenkins(client, note)
        assert (response.status_code, response.json["status"]) == (503, "busy"), response.json
        assert stored() == 0
        assert busy_counts(client) == {"gitlab": before["gitlab"] + 1,
                                       "jenkins": before["jenkins"] + 1}
    finally:
        for _ in taken:
            trimmed_body._reading.release()
    response = gitlab(client, PUSH, **{"Idempotency-Key": "busy-1"})  # a person's Resend
    assert (response.status_code, response.json["status"]) == (202, "queued"), response.json
    assert stored() == 1


def test_an_event_that_builds_nothing_past_the_limit_is_drained_unread_and_ignored(
        redis_url, stored):
    """Nothing of a merge request's event is read, however large: it is not trimmed (which
    took one of the two reads pushes past the limit have), and its body's JSON is not judged
    (a 400 counts towards GitLab disabling the hook; a small one's is 200 ignored too)."""
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    for body in (fixture_bytes("gitlab_merge_request_open_real_lrz.json"),
                 b'{"object_kind": "merge_request", ' + b"x" * 2048):
        response = gitlab(client, body, event="Merge Request Hook")
        assert (response.status_code, response.json["status"]) == (200, "ignored"), \
            response.json
        assert "'Merge Request Hook' does not start builds" in response.json["reason"]
    assert stored() == 0


def _invalid_counted(client) -> dict[str, float]:
    metrics = client.get("/metrics").get_data(as_text=True)
    series = {"gitlab": '{event="push",result="invalid",source="gitlab"}',
              "jenkins": '{event="other",result="invalid",source="jenkins"}'}
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
                  if line.startswith("ci_autoscaler_webhooks_total{"))
    return {source: float(values["ci_autoscaler_webhooks_total" + labels])
            for source, labels in series.items()}


def test_a_body_refused_while_read_is_counted_as_an_invalid_delivery(redis_url):
    """413 (too large), 400 (a body cut short) are deliveries too: /metrics read fewer than
    were sent, and the dashboard showed nothing while GitLab counted them against the hook."""
    client = make_app(redis_url, max_body_bytes=1024).test_client()
    before = _invalid_counted(client)
    assert client.post("/webhooks/gitlab", data=PUSH, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN},
        environ_overrides={"CONTENT_LENGTH": str(26 * 2**20)}).status_code == 413
    assert client.post("/webhooks/jenkins", data=b"{}", headers={
        "X-Jenkins-Token": JENKINS_TOKEN},
        environ_overrides={"CONTENT_LENGTH": "500"}).status_code == 400
    big = {"name": "x" * 2048, "build": {"number": 1, "phase": "COMPLETED"}}
    assert jenkins(client, big).status_code == 413
    after = _invalid_counted(client)
    assert after["gitlab"] - before["gitlab"] == 1
    assert after["jenkins"] - before["jenkins"] == 2


def _counted(client, labels: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(f"ci_autoscaler_{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_handler_that_fails_answers_500_and_is_counted(client, monkeypatch, caplog):
    """A bug in a handler answered 500 and was in no counter: a web whose every delivery
    failed showed on the dashboard as deliveries stopping, not as deliveries failing."""
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("service.webhooks.route_push", broken)
    monkeypatch.setattr("service.webhooks.parse_jenkins_notification", broken)
    series = {source: f'webhooks_total{{event="other",result="error",source="{source}"}}'
              for source in ("gitlab", "jenkins")}
    unexpected = 'errors_total{component="webhook",kind="unexpected"}'
    before = {name: _counted(client, labels)
              for name, labels in (*series.items(), ("errors", unexpected))}
    with caplog.at_level(logging.ERROR, logger="ci_autoscaler.web"):
        assert gitlab(client).status_code == 500
        response = jenkins(client, fixture("jenkins_notification_started.json"))
    assert response.status_code == 500 and response.json["error"] == "internal_server_error"
    assert _counted(client, series["gitlab"]) == before["gitlab"] + 1
    assert _counted(client, series["jenkins"]) == before["jenkins"] + 1
    assert _counted(client, unexpected) == before["errors"] + 2
    assert [r.message for r in caplog.records].count("webhook failed") == 2


def test_branch_deletion_is_200_ignored(client, stored):
    body = json.loads(PUSH) | {"after": "0" * 40, "checkout_sha": None}
    response = gitlab(client, json.dumps(body))
    assert response.status_code == 200
    assert response.json == {"status": "ignored", "reason": "branch deleted"}
    assert stored() == 0


@pytest.mark.parametrize("name,event", [
    ("gitlab_merge_request_open_real_lrz.json", "Merge Request Hook"),
    ("gitlab_job_gitlabcom_2023_gogitlab.json", "Job Hook"),
    ("gitlab_tag_push_delete_real_lrz.json", "Tag Push Hook"),
])
def test_other_events_and_deletions_are_200_ignored(client, stored, name, event):
    response = gitlab(client, fixture_bytes(name), event=event)
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert stored() == 0


def test_a_system_hooks_push_is_queued_and_its_other_events_are_200_ignored(
        client, stored, jobs):
    """An instance's system hook: `X-Gitlab-Event: System Hook`, the kind in `event_name`
    (docs.gitlab.com/administration/system_hooks), no object_kind or user_username."""
    push = {k: v for k, v in json.loads(PUSH).items() if k not in ("object_kind",
                                                                  "user_username")}
    response = gitlab(client, json.dumps(push), event="System Hook")
    assert response.status_code == 202, response.json
    (job,) = jobs()
    assert job.kwargs["build"]["build_key"] == response.json["build_key"]
    update = gitlab(client, json.dumps(push | {"event_name": "repository_update"}),
                    event="System Hook")
    assert update.status_code == 200 and update.json == {
        "status": "ignored", "reason": "system hook event 'repository_update' does not start "
                                       "builds"}
    assert stored() == 1
    metrics = client.get("/metrics").get_data(as_text=True)  # counted as the push it is
    queued_as = {line.split('event="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                 for line in metrics.splitlines() if line.startswith(
                     "ci_autoscaler_webhooks_total{") and 'result="queued"' in line}
    assert queued_as["push"] >= 1 and queued_as["other"] == 0


def test_tag_push_is_queued(client, jobs):
    response = gitlab(client, fixture_bytes("gitlab_tag_push_create_real_lrz.json"),
                      event="Tag Push Hook")
    assert response.status_code == 202
    assert jobs()[0].kwargs["build"]["parameters"]["GIT_TAG"]


def test_redis_down_and_no_spool_is_503_and_the_redelivery_is_queued_once_it_is_back(
        own_redis, tmp_path):
    (tmp_path / "file").write_text("")  # the spool's directory cannot be made
    client = make_app(own_redis.url, spool_dir=str(tmp_path / "file" / "spool")).test_client()
    own_redis.stop()
    response = gitlab(client, **{"Idempotency-Key": "retry-me"})
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert "Redis is unavailable and the spool cannot be written" in response.json["reason"]
    assert client.get("/readyz").status_code == 503
    own_redis.start()
    assert gitlab(client, **{"Idempotency-Key": "retry-me"}).status_code == 202
    assert client.get("/readyz").status_code == 200


def test_app_refuses_to_start_without_webhook_tokens(redis_url):
    settings = make_settings(redis_url, gitlab_webhook_token=None, jenkins_webhook_token="")
    with pytest.raises(ConfigError) as err:
        create_app(settings)
    assert any("GITLAB_WEBHOOK_TOKEN" in p for p in err.value.problems)
    assert any("JENKINS_WEBHOOK_TOKEN" in p for p in err.value.problems)


def test_rejected_requests_are_logged_without_the_token(client, caplog):
    caplog.set_level(logging.INFO)
    gitlab(client, token="attacker-guess-123")
    gitlab(client)
    jenkins(client, {}, token="attacker-guess-456")
    text = caplog.text + " ".join(str(vars(r)) for r in caplog.records)
    assert "webhook rejected" in text
    for secret in ("attacker-guess-123", "attacker-guess-456", GITLAB_TOKEN, JENKINS_TOKEN):
        assert secret not in text


def test_health_and_metrics(client):
    gitlab(client, token="wrong")
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}
    metrics = client.get("/metrics").get_data(as_text=True)
    line = 'ci_autoscaler_webhooks_total{event="push",result="unauthorized",source="gitlab"}'
    assert line in metrics


# --- Jenkins notifications -----------------------------------------------------------------

def our_notification(client, jobs, phase, status="SUCCESS"):
    """Queue a push (its job made by the mover), then a Jenkins notification for the build on
    its agent."""
    build_key = gitlab(client, **{"Idempotency-Key": "p-1"}).json["build_key"]
    jobs()
    payload = fixture("jenkins_notification_completed_unstable.json")
    agent = client.application.extensions["ci_autoscaler"].state.get_build(build_key)["agent"]
    payload.update(name="build", url="job/build/")  # the job the example's routes start
    payload["build"].update(phase=phase, status=status)
    payload["build"]["parameters"][AGENT_PARAMETER] = agent
    return build_key, payload


def test_jenkins_completed_on_our_agent_queues_release_once(client, queue, jobs):
    build_key, payload = our_notification(client, jobs, "COMPLETED")
    first = jenkins(client, payload)
    assert first.status_code == 202 and first.json["build_key"] == build_key
    payload["build"]["phase"] = "FINALIZED"
    assert jenkins(client, payload).json["status"] == "duplicate"
    # The web stores it in the intake (its Redis user may not write RQ jobs); the mover makes
    # the job, which records the result when it runs (workers.tasks.release_agent).
    releases = [j for j in jobs() if j.func_name == "workers.tasks.release_agent"]
    assert len(releases) == 1
    assert releases[0].kwargs["build_key"] == build_key
    assert releases[0].kwargs["notification"]["result"] == "SUCCESS"


def _started_counted(client) -> dict[str, float]:
    metrics = client.get("/metrics").get_data(as_text=True)
    return {line.split('result="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines() if line.startswith(
                "ci_autoscaler_webhooks_total{") and 'event="started"' in line
            and 'source="jenkins"' in line}


def test_jenkins_started_marks_the_agent_busy(client, queue, jobs):
    build_key, payload = our_notification(client, jobs, "STARTED", status=None)
    payload["build"].pop("status")
    before = _started_counted(client)
    response = jenkins(client, payload)
    assert response.status_code == 200 and response.json["status"] == "recorded"
    # counted with the answer's own word: as "queued", a dashboard showed a job queued for
    # each run started, where none was
    after = _started_counted(client)
    assert after["recorded"] - before["recorded"] == 1
    assert after["queued"] == before["queued"]
    state = client.application.extensions["ci_autoscaler"].state
    assert state.get_build(build_key)["status"] == "queued"  # the web writes no build record
    assert len(jobs()) == 1  # the worker's mover applies it: no job, only the provision's
    assert state.get_build(build_key)["status"] == "running"
    assert queue.count == 1


@pytest.mark.parametrize("name", ["jenkins_notification_started.json",
                                  "jenkins_notification_completed_unstable.json",
                                  "jenkins_notification_finalized.json",
                                  "jenkins_notification_finished_legacy.json"])
def test_real_jenkins_notifications_not_on_our_agents_are_ignored(client, stored, name):
    response = jenkins(client, fixture(name))
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert stored() == 0


def test_jenkins_token_in_header_works_and_wrong_token_is_401(client):
    payload = fixture("jenkins_notification_finalized.json")
    assert client.post("/webhooks/jenkins", json=payload,
                       headers={"X-Jenkins-Token": JENKINS_TOKEN}).status_code == 200
    assert jenkins(client, payload, token="nope").status_code == 401
    assert client.post("/webhooks/jenkins", json=payload).status_code == 401


@pytest.mark.parametrize("query", ["ab+cd/ef==", "ab%2Bcd%2Fef%3D%3D"], ids=["raw", "encoded"])
def test_a_jenkins_token_with_a_plus_is_taken_as_the_plugin_sends_it(redis_url, query):
    """The Notification plugin sends its endpoint's URL as typed (java.net.URL encodes
    nothing): a token of base64's alphabet (`openssl rand -base64`) arrives with its "+" raw,
    which a query parser reads as a space, and every notification was 401."""
    client = make_app(redis_url, jenkins_webhook_token="ab+cd/ef==").test_client()
    payload = fixture("jenkins_notification_finalized.json")
    response = client.post(f"/webhooks/jenkins?token={query}", json=payload)
    assert response.status_code == 200, response.json
    assert client.post("/webhooks/jenkins?token=ab cd/ef==", json=payload).status_code == 401


def test_jenkins_bad_body_is_400(client):
    response = client.post(f"/webhooks/jenkins?token={JENKINS_TOKEN}", data=b"[1,",
                           content_type="application/json")
    assert response.status_code == 400 and "JSON" in response.json["reason"]



def test_a_store_that_fails_halfway_is_spooled_and_the_redelivery_is_queued_once(
        client, stored, redis_conn):
    redis_conn.set("cia:intake", "not a list")  # the RPUSH fails inside the push script
    response = gitlab(client, **{"Idempotency-Key": "half"})
    assert response.status_code == 202 and response.json["status"] == "spooled"
    assert not redis_conn.exists("cia:delivery:gitlab:half")  # not taken for a duplicate later
    redis_conn.delete("cia:intake")
    assert gitlab(client, **{"Idempotency-Key": "half"}).status_code == 202
    ctx = client.application.extensions["ci_autoscaler"]
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 1  # the spooled one: a duplicate
    assert stored() == 1


@pytest.mark.parametrize("path", ["/webhooks/gitlab/", "/webhooks//gitlab", "/webhooks//gitlab/"])
def test_a_hook_url_pasted_with_a_final_or_a_doubled_slash_is_the_webhook(client, stored, path):
    """A hook's URL as operators paste it: with a final '/', or the host's URL ending in '/'
    before the path. Each was 404, which GitLab counts as a failed delivery (four disable the
    hook), and the Notification plugin ignores: its builds' agents were never released."""
    response = client.post(path, data=PUSH, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Content-Type": "application/json", "Idempotency-Key": f"slash-{path}"})
    assert response.status_code == 202 and response.json["status"] == "queued", response.json
    assert stored() == 1
    assert client.post(path, data=PUSH, headers={"X-Gitlab-Event": "Push Hook"}
                       ).status_code == 401  # the token is checked all the same
    payload = fixture("jenkins_notification_finalized.json")
    response = client.post(f"{path.replace('gitlab', 'jenkins')}?token={JENKINS_TOKEN}",
                           json=payload)
    assert response.status_code == 200 and response.json["status"] == "ignored", response.json


@pytest.mark.parametrize("path", ["/webhooks/gitlab", "/webhooks/jenkins"])
def test_a_webhook_path_takes_post_only(client, stored, path):
    response = client.get(path)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json["reason"] and stored() == 0


def test_other_paths_are_flasks(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.post("/webhooks/other").status_code == 404


def test_a_webhook_token_from_a_file_with_its_newline_takes_gitlabs_deliveries(
        monkeypatch, redis_url):
    """The web built from the environment, its token as a Secret made --from-file gives it."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CI_AUTOSCALER_CONFIG", str(EXAMPLE_CONFIG))
    monkeypatch.setenv("GITLAB_WEBHOOK_TOKEN", GITLAB_TOKEN + "\n")
    monkeypatch.setenv("JENKINS_WEBHOOK_TOKEN", JENKINS_TOKEN + "\n")
    monkeypatch.setenv("CI_AUTOSCALER_SPOOL_DIR", spool_dir())
    client = create_app().test_client()
    assert gitlab(client, **{"Idempotency-Key": "from-file"}).status_code == 202
    assert jenkins(client, fixture("jenkins_notification_finalized.json")).status_code != 401

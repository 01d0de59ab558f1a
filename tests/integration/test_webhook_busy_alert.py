"""A push past the body limit that comes while two others are being read is answered 503
busy and stored nowhere (service/trimmed_body.py): GitLab never sends it again. Nothing told
an operator: no alert read the answer, and its series appeared only with the first one, which
Prometheus' increase() cannot see (a series that starts at 1 has increased by nothing). On
Debian's Prometheus scraping the web app's /metrics, with the shipped rules and a real
redis-server, CIWebhookBusy fires for that one push."""

import json
import urllib.error
import urllib.request

from service import trimmed_body
from tests.support.app import GITLAB_TOKEN, make_app
from tests.support.dashboards import rules_with_for
from tests.support.monitoring import Prometheus, running, serve_app, wait_until
from tests.support.payloads import fixture_bytes

PUSH = fixture_bytes("gitlab_push_real_lrz.json")  # about 3.5 KB: past a 1 KiB limit
BUSY = 'ci_autoscaler_webhooks_total{source="gitlab",event="push",result="busy"}'


def _push(base: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/webhooks/gitlab", data=PUSH, method="POST", headers={
        "Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Token": GITLAB_TOKEN, "Idempotency-Key": "busy-alert-1"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_one_push_refused_as_busy_fires_the_busy_alert(redis_url, tmp_path):
    app = make_app(redis_url, max_body_bytes=1024)
    rule_file = tmp_path / "rules-for-1s.yaml"
    rule_file.write_text(rules_with_for("1s"))
    with serve_app(app) as base:
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rule_file],
                                targets={"ci-autoscaler": base.removeprefix("http://")})
        with running(prometheus):
            wait_until(lambda: prometheus.query(f"count_over_time({BUSY}[1m]) >= 3")[
                "data"]["result"], timeout=30, what="scrapes of the busy series at 0")
            assert prometheus.alert_state("CIWebhookBusy") is None
            # two bodies past the limit being read by other threads: their slots taken here
            taken = [trimmed_body._reading.acquire(blocking=False)
                     for _ in range(trimmed_body.OVERSIZED_READS)]
            try:
                assert all(taken)
                status, answer = _push(base)
            finally:
                for _ in taken:
                    trimmed_body._reading.release()
            assert (status, answer["status"]) == (503, "busy"), answer
            wait_until(lambda: prometheus.alert_state("CIWebhookBusy") == "firing",
                       timeout=60, what="CIWebhookBusy firing")
            [alert] = [a for a in prometheus.alerts()
                       if a["labels"]["alertname"] == "CIWebhookBusy"]
            assert alert["labels"]["source"] == "gitlab"
            assert alert["annotations"]["description"].startswith(
                "1 gitlab webhook(s) past the body limit were answered 503 busy")

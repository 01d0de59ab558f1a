"""Catch-up passes that fail show in /metrics (ci_autoscaler_catch_up_failing_seconds,
_pass_age_seconds) and page through alert CIGitLabCatchUpFailing, on Debian's Prometheus.

GitLab never re-sends a delivery it failed or skipped (REALITY.md): the catch-up is the only
way a push whose webhook was lost gets built. When every pass fails (the API token expired,
revoked or without read_api, GitLab down), those pushes were never built, and nothing but a
counter of errors, which no alert read, and a log line said so. Real parts: redis-server, the
web app's /metrics, python-gitlab against the GitLab API fake over HTTP, Prometheus."""

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.test_catchup import CONFIG, metric, world  # noqa: F401 (a fixture)
from tests.support.app import make_settings
from tests.support.dashboards import ROOT, rules_with_for
from tests.support.monitoring import Prometheus, running, serve_app, wait_until
from tests.support.redis_server import free_port
from workers.adapters import gitlab as gitlab_api
from workers.engine import catchup

FAILING = "ci_autoscaler_catch_up_failing_seconds"
PASS_AGE = "ci_autoscaler_catch_up_pass_age_seconds"
ALERT = "CIGitLabCatchUpFailing"


def _expired(gitlab_fake, cu):
    gitlab_fake.expired_tokens.add(gitlab_fake.token)
    return cu


def _clone_scope_only(gitlab_fake, cu):
    """A token made for read_repository alone: 403 insufficient_scope to every API call."""
    gitlab_fake.tokens["glpat-clone-only-4Rt8"] = {"read_repository"}
    cu.gl = gitlab_api.client(url=gitlab_fake.url, token="glpat-clone-only-4Rt8")
    return cu


def _gitlab_down(gitlab_fake, cu):
    """GitLab's front answering 503 to everything (an upgrade)."""
    gitlab_fake.outage(3600, status=503, retry_after=0)
    return cu


def _unreachable(gitlab_fake, cu):
    cu.gl = gitlab_api.client(url=f"http://127.0.0.1:{free_port()}", token=gitlab_fake.token)
    return cu


@pytest.mark.parametrize("break_it", [_expired, _clone_scope_only, _gitlab_down, _unreachable])
def test_passes_that_fail_show_how_long_they_have_failed_until_one_catches_up(
        world, gitlab_fake, break_it):
    app, state, new_catch_up = world
    assert metric(app, FAILING) is None and metric(app, PASS_AGE) is None  # no pass yet
    catchup.catch_up_once(new_catch_up(), now=time.time() - 400)  # good, 400 s ago
    assert metric(app, FAILING) == 0 and 400 <= metric(app, PASS_AGE) < 460

    broken = break_it(gitlab_fake, new_catch_up())
    assert catchup.pass_failed(catchup.catch_up_once(broken, now=time.time() - 300))
    assert catchup.pass_failed(catchup.catch_up_once(broken))

    assert 300 <= metric(app, FAILING) < 360  # since the first of them
    assert metric(app, PASS_AGE) >= 400  # the good pass's

    gitlab_fake.expired_tokens.clear()
    gitlab_fake.outage(0)
    assert not catchup.pass_failed(catchup.catch_up_once(new_catch_up()))
    assert metric(app, FAILING) == 0 and metric(app, PASS_AGE) < 60


def test_passes_failing_from_the_first_show_no_pass_caught_up(world, gitlab_fake):
    """An installation whose token never worked (revoked before the first pass)."""
    app, state, new_catch_up = world
    cu = new_catch_up(token="glpat-revoked-9Zx1")
    catchup.catch_up_once(cu)
    assert metric(app, FAILING) >= 0 and metric(app, PASS_AGE) == float("inf")


def test_an_expired_token_pages_in_a_real_prometheus_and_resolves_once_renewed(
        world, gitlab_fake, tmp_path):
    """The alert's `for` made 1s; the first failed pass run as of 11 minutes ago (its `now`),
    so that passes have failed longer than the rule's 10 minutes."""
    app, state, new_catch_up = world
    rules = tmp_path / "rules-for-1s.yaml"
    rules.write_text(rules_with_for("1s"))
    catchup.catch_up_once(new_catch_up())
    with serve_app(app) as base:
        prometheus = Prometheus(tmp_path / "prometheus", rule_files=[rules],
                                targets={"ci-autoscaler": base.removeprefix("http://")})
        with running(prometheus):
            wait_until(lambda: prometheus.query(f"{FAILING} == 0")["data"]["result"],
                       timeout=30, what="Prometheus scraping passes that catch up")
            moment = datetime.now(timezone.utc) + timedelta(seconds=3)
            wait_until(lambda: prometheus.evaluated_after(moment, ALERT), timeout=30,
                       what=f"{ALERT} evaluated 3 s after the scrape")
            assert prometheus.alert_state(ALERT) is None

            gitlab_fake.expired_tokens.add(gitlab_fake.token)
            cu = new_catch_up()
            catchup.catch_up_once(cu, now=time.time() - 660)
            catchup.catch_up_once(cu)
            wait_until(lambda: prometheus.alert_state(ALERT) == "firing", timeout=30,
                       what=f"{ALERT} firing while every pass fails")
            [alert] = [a for a in prometheus.alerts() if a["labels"]["alertname"] == ALERT]
            refused = re.search(r"\((\d+) of its errors in the last 15 minutes were GitLab "
                                r"refusing the API token", alert["annotations"]["description"])
            assert refused and int(refused.group(1)) >= 1, alert["annotations"]
            assert gitlab_fake.token not in str(alert)

            gitlab_fake.expired_tokens.clear()  # renewed
            catchup.catch_up_once(new_catch_up())
            wait_until(lambda: prometheus.alert_state(ALERT) is None, timeout=30,
                       what=f"{ALERT} resolved once a pass caught up")


def test_a_catch_up_turned_off_leaves_no_failing_passes_behind(world, gitlab_fake):
    """GITLAB_URL taken away after passes failed (the catch-up given up on): the reconcile
    process starts without it, and its last failing streak, left in Redis, would have grown
    and paged for ever."""
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up(token="glpat-revoked-9Zx1"))
    assert metric(app, FAILING) is not None
    settings = app.extensions["ci_autoscaler"].settings
    assert not settings.catch_up_enabled  # the test app's settings name no GitLab
    assert catchup.from_settings(settings, new_catch_up().config, state) is None
    assert metric(app, FAILING) is None and metric(app, PASS_AGE) is None


@pytest.mark.parametrize("given", [{"gitlab_url": "https://gitlab.example.com",
                                    "gitlab_api_token": ""},
                                   {"gitlab_api_token": "glpat-only-the-token-8Vw2"}])
def test_a_catch_up_half_configured_keeps_its_failing_streak_and_says_why(
        world, gitlab_fake, redis_url, given):
    """A reconcile pod started with GITLAB_URL set and the token blank (the Secret's value
    emptied at a rotation, its key renamed), or the other way round, runs no catch-up. It
    forgot the failing streak of the passes before, as if the catch-up had been turned off:
    CIGitLabCatchUpFailing resolved while no push whose webhook GitLab lost was built. Its
    start now counts as a failing pass naming the missing setting, the streak's start kept."""
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up(token="glpat-revoked-9Zx1"), now=time.time() - 700)
    assert metric(app, FAILING) >= 700
    settings = make_settings(redis_url, **given)  # as the world's app, but for GitLab
    assert not settings.catch_up_enabled

    assert catchup.from_settings(settings, new_catch_up().config, state) is None

    assert metric(app, FAILING) >= 700  # None before: the streak forgotten
    page = " ".join(app.test_client().get("/status").get_data(as_text=True).split())
    missing = "GITLAB_API_TOKEN" if "gitlab_url" in given else "GITLAB_URL"
    assert f"catch-up off: {missing} is not set" in page
    assert "glpat-only-the-token-8Vw2" not in page


def test_a_catch_up_half_configured_after_good_passes_starts_failing(
        world, gitlab_fake, redis_url):
    """After passes that caught up, a restart with the token blank: the catch-up stops, and
    /metrics went on saying nothing failed (its series removed)."""
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up())
    assert metric(app, FAILING) == 0
    settings = make_settings(redis_url, gitlab_url="https://gitlab.example.com",
                             gitlab_api_token="")

    catchup.from_settings(settings, new_catch_up().config, state)

    assert metric(app, FAILING) is not None and metric(app, PASS_AGE) is not None


def test_the_status_page_says_since_when_the_catch_up_fails_and_why(world, gitlab_fake):
    """For an operator with no Grafana: the page said nothing of the catch-up."""
    app, state, new_catch_up = world
    catchup.catch_up_once(new_catch_up())
    page = app.test_client().get("/status").get_data(as_text=True)
    assert 'id="catch-up-failing"' not in page
    gitlab_fake.expired_tokens.add(gitlab_fake.token)
    cu = new_catch_up()
    catchup.catch_up_once(cu, now=time.time() - 300)
    catchup.catch_up_once(cu)
    page = " ".join(app.test_client().get("/status").get_data(as_text=True).split())
    line = re.search(r'<span class="alert" id="catch-up-failing">(.*?)</span>', page)
    assert line, page[:2000]
    assert "(2 passes in a row; last pass that caught up every project: " in line.group(1)
    assert "team: TokenRefused: " in line.group(1) and "Token is expired" in line.group(1)
    assert gitlab_fake.token not in page


def test_a_pass_ended_by_a_hooks_read_leaves_the_next_projects_not_caught_up_and_fails(
        world, gitlab_fake, caplog):
    """GitLab's rate limit (RateLimit-Remaining down to the reserve, the window's reset an
    hour away: workers.core.rate_limits) met on team/app's hooks read ends the pass
    (ends_pass) before team/lib, whose push is not built. That pass was recorded as one that
    caught up every project, so a throttle met there kept
    ci_autoscaler_catch_up_failing_seconds at 0, the status page silent, and `catch-up
    --once` at exit 0."""
    app, state, new_catch_up = world
    assert not catchup.pass_failed(catchup.catch_up_once(new_catch_up()))
    gitlab_fake.push("team/lib", "main", "c" * 40)
    # the group's listing, team/app's branches, tags: served; its hooks: the reserve is met
    gitlab_fake.rate_limit(5, 3600)
    caplog.set_level("WARNING", logger="ci_autoscaler.catchup")
    result = catchup.catch_up_once(new_catch_up(), now=time.time() - 60)
    assert [r.getMessage() for r in caplog.records] == ["reading a project's hooks failed"]
    assert "queued" not in result and result.get("projects") == 1, result
    assert catchup.pass_failed(result), result
    assert metric(app, FAILING) >= 60
    page = " ".join(app.test_client().get("/status").get_data(as_text=True).split())
    line = re.search(r'<span class="alert" id="catch-up-failing">(.*?)</span>', page)
    assert line and "team/app: " in line.group(1), page[:2000]

    gitlab_fake.rate_limit(1000, 3600)
    assert catchup.catch_up_once(new_catch_up())["queued"] == 1  # team/lib's push
    assert metric(app, FAILING) == 0


def test_a_pass_stopped_for_a_lease_lost_records_nothing(world, gitlab_fake):
    """Another reconcile process took the catch-up lease mid-pass (this one stalled past it):
    the pass stops before the projects left. It was recorded as one that caught up every
    project, and so ended the failing streak the new leader's passes were in (an expired token
    failing them), and CIGitLabCatchUpFailing's pending time started over."""
    app, state, new_catch_up = world
    gitlab_fake.expired_tokens.add(gitlab_fake.token)
    assert catchup.pass_failed(catchup.catch_up_once(new_catch_up(), now=time.time() - 300))
    gitlab_fake.expired_tokens.clear()  # this instance's pass: served, then the lease is lost
    leader = iter([True])
    result = catchup.catch_up_once(new_catch_up(), still_leader=lambda: next(leader, False))
    assert result.get("projects") == 1, result
    assert metric(app, FAILING) >= 300  # the streak the leader's passes are in goes on


def test_a_catch_up_command_run_without_gitlab_leaves_the_failing_passes(
        world, gitlab_fake, redis_url, tmp_path):
    """The runbook's `ci-autoscaler catch-up --once`, run where GITLAB_URL and the token are
    not (the web pod: the chart gives them to the reconcile pods alone), is refused; it also
    forgot the passes failing in Redis, so CIGitLabCatchUpFailing resolved and took its 15
    minutes again from the next failed pass."""
    app, state, new_catch_up = world
    cu = new_catch_up(token="glpat-revoked-9Zx1")
    catchup.catch_up_once(cu, now=time.time() - 900)
    config = tmp_path / "ci.yaml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_")}
    result = subprocess.run([sys.executable, "-m", "service.cli", "catch-up", "--once"],
                            cwd=ROOT, env=dict(env, REDIS_URL=redis_url,
                                               CI_AUTOSCALER_CONFIG=str(config)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "GITLAB_URL and GITLAB_API_TOKEN: required" in result.stderr
    assert metric(app, FAILING) >= 900

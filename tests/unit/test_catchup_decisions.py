"""The catch-up's pure decisions (workers.core.catchup, workers.core.catchup_project) and its
pacing (workers.core.rate_limits): which refs changed, what becomes of each changed head, which
refs a project is listed for, when our hook counts as disabled, which project a name leads to
and when to look it up again, how long to wait before the next API call."""

import pytest
from pydantic import ValidationError

from workers.core import rate_limits
from workers.core.catchup import (
    CatchUpSources, Head, Verdict, changed_heads, decide, delivery_id, head_commit_key,
    hook_disabled, is_our_hook, kinds_listed, kinds_needed, named_projects, settle_absences,
    vanished_refs)
from workers.core.catchup_project import (
    RESOLVE_SECONDS, ProjectRef, memory_name, path_memory_adoptable, resolution_due,
    resolve_phase, routes_for)
from workers.core.keys import run_key
from workers.core.models import EventKind, Route
from workers.core.routing import parse_gitlab_push, push_commit_key, route_push

ROUTES = (Route(project="team/*", ref="refs/heads/*", job="build"),
          Route(project="team/app", ref="refs/tags/v*", job="release"))
A, B = "a" * 40, "b" * 40


def test_only_new_and_moved_refs_are_changed_and_deleted_refs_vanish():
    heads = [Head("refs/heads/main", A), Head("refs/heads/new", A), Head("refs/heads/moved", B)]
    seen = {"refs/heads/main": A, "refs/heads/moved": A, "refs/heads/gone": A}
    assert changed_heads(heads, seen) == heads[1:]
    assert vanished_refs(heads, seen) == ["refs/heads/gone"]
    assert changed_heads(heads, {h.ref: h.sha for h in heads}) == []


def test_no_ref_of_a_kind_gitlab_listed_short_vanishes():
    """A listing GitLab cut short (it counted more than it listed) deletes nothing of that
    kind; the other kind's deletions stand."""
    heads = [Head("refs/heads/main", A), Head("refs/tags/v2", A)]
    seen = {"refs/heads/main": A, "refs/heads/far": A, "refs/tags/v1": A}
    assert vanished_refs(heads, seen, partial={EventKind.PUSH}) == ["refs/tags/v1"]
    assert vanished_refs(heads, seen, partial={EventKind.TAG_PUSH}) == ["refs/heads/far"]


def test_a_ref_is_forgotten_once_two_passes_in_a_row_do_not_list_it():
    first = settle_absences(["refs/heads/a", "refs/heads/b"], absent_before=set())
    assert first.forget == [] and first.absent == ["refs/heads/a", "refs/heads/b"]
    second = settle_absences(["refs/heads/b"], absent_before=set(first.absent))
    assert second.forget == ["refs/heads/b"] and second.absent == []  # a was listed again


@pytest.mark.parametrize("baseline, partial, listed", [
    (set(), {EventKind.PUSH}, {EventKind.PUSH, EventKind.TAG_PUSH}),
    ({EventKind.PUSH, EventKind.TAG_PUSH}, {EventKind.PUSH}, {EventKind.TAG_PUSH}),
    ({EventKind.TAG_PUSH}, {EventKind.PUSH}, {EventKind.PUSH, EventKind.TAG_PUSH}),
    ({EventKind.PUSH}, set(), {EventKind.PUSH, EventKind.TAG_PUSH})])
def test_a_first_listing_cut_short_does_not_count_as_the_kinds_baseline(baseline, partial,
                                                                        listed):
    both = {EventKind.PUSH, EventKind.TAG_PUSH}
    assert kinds_listed(both, baseline=baseline, partial=partial) == listed


BOTH, TAGS = {EventKind.PUSH, EventKind.TAG_PUSH}, {EventKind.TAG_PUSH}


@pytest.mark.parametrize("ref, built, baseline, verdict", [
    ("refs/heads/main", set(), (), Verdict.BUILD),
    ("refs/heads/main", {"it"}, (), Verdict.BUILT),
    ("refs/heads/main", set(), BOTH, Verdict.BASELINE),
    ("refs/tags/v1.0", set(), (), Verdict.BUILD),
    ("refs/tags/nightly", set(), (), Verdict.UNROUTED),
    ("refs/tags/nightly", set(), BOTH, Verdict.UNROUTED),
    # tags listed for the first time (a tag route added): recorded, not built; branches go on
    ("refs/tags/v1.0", set(), TAGS, Verdict.BASELINE),
    ("refs/heads/main", set(), TAGS, Verdict.BUILD),
])
def test_each_changed_head_gets_one_verdict_with_a_reason(ref, built, baseline, verdict):
    head = Head(ref, A)
    commit = head_commit_key("team/app", head)
    built = {commit} if built else set()
    [decision] = decide("team/app", [head], routes=ROUTES, built=built, baseline=baseline,
                        received_at=5.0)
    assert decision.verdict is verdict and decision.reason and decision.commit == commit
    assert (decision.request is not None) == (verdict is Verdict.BUILD)


def test_a_catch_up_build_is_the_webhooks_build_of_the_same_commit_under_its_own_delivery():
    """Same routing and commit key as the webhook (so the run mark dedupes the two), and a
    delivery id that is the same on every pass (so the intake dedupes a second pass)."""
    webhook = parse_gitlab_push("Push Hook", {
        "ref": "refs/heads/main", "after": A, "checkout_sha": A, "user_username": "ann",
        "project": {"path_with_namespace": "team/app"}})
    commit = push_commit_key(webhook)
    [decision] = decide("team/app", [Head("refs/heads/main", A)], routes=ROUTES, built=(),
                        baseline=(), received_at=5.0)
    assert decision.commit == commit
    assert delivery_id(commit) == f"catch-up:{commit}"
    request = decision.request
    assert request.build_key == run_key(commit, delivery_id(commit))
    by_webhook = route_push(webhook, ROUTES, delivery="d1", commit=commit)
    assert (request.job, request.template, request.source, request.sha) == \
        (by_webhook.job, by_webhook.template, by_webhook.source, by_webhook.sha)
    assert request.user == ""  # the API does not say who pushed


def test_an_annotated_or_light_tag_is_a_tag_push_of_its_commit():
    assert Head("refs/tags/v1", A).event is EventKind.TAG_PUSH
    assert Head("refs/heads/v1", A).event is EventKind.PUSH


@pytest.mark.parametrize("project, routes, kinds", [
    ("team/app", ROUTES, {EventKind.PUSH, EventKind.TAG_PUSH}),
    ("team/lib", ROUTES, {EventKind.PUSH}),
    ("other/x", ROUTES, set()),
    ("x/y", (Route(project="*", ref="*", job="j"),), {EventKind.PUSH, EventKind.TAG_PUSH}),
    ("x/y", (Route(project="*", ref="refs/*", job="j"),), {EventKind.PUSH, EventKind.TAG_PUSH}),
    ("x/y", (Route(project="*", ref="refs/heads/release-*", job="j"),), {EventKind.PUSH}),
    ("x/y", (Route(project="*", ref="refs/t[a]gs/*", job="j"),), {EventKind.TAG_PUSH}),
])
def test_a_project_is_listed_only_for_the_ref_kinds_its_routes_may_match(project, routes, kinds):
    assert kinds_needed(project, routes) == kinds


def test_the_projects_are_those_routes_name_literally_and_those_listed():
    routes = (Route(project="*", job="a"), Route(project="team/app", job="b"),
              Route(project="team/l?b", job="c"))
    assert named_projects(routes, CatchUpSources(projects=("ops/infra",))) == \
        ["ops/infra", "team/app"]
    assert named_projects(routes, None) == ["team/app"]


@pytest.mark.parametrize("bad", ["", "/team/app", "team/*", "team/app/"])
def test_catch_up_sources_refuse_a_glob_or_a_partial_path(bad):
    with pytest.raises(ValidationError):
        CatchUpSources(projects=(bad,))
    with pytest.raises(ValidationError):
        CatchUpSources.model_validate({"project": ["team/app"]})  # a typo is named


NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z


@pytest.mark.parametrize("hook, disabled", [
    ({"alert_status": "executable", "disabled_until": None}, False),
    ({"alert_status": "temporarily_disabled", "disabled_until": "2025-06-15T15:07:40Z"}, True),
    ({"alert_status": "disabled", "disabled_until": None}, True),
    ({"alert_status": "executable", "disabled_until": "2025-06-15T15:00:00.000Z"}, False),
    ({"disabled_until": "2025-06-15T17:07:40.000+02:00"}, True),  # a GitLab without alert_status
    ({}, False),
])
def test_a_hook_is_disabled_as_gitlabs_auto_disabling_says(hook, disabled):
    assert hook_disabled(hook, NOW) is disabled


@pytest.mark.parametrize("url, ours", [
    ("https://ci.example.com/webhooks/gitlab", True),
    ("https://ci.example.com/webhooks/gitlab/", True),
    ("https://ci.example.com/webhooks/gitlab?x=1", True),
    ("https://ci.example.com/webhooks/jenkins", False),
    ("https://other.example.com/hook", False),
    (None, False),
])
def test_our_hook_is_the_one_that_points_at_our_endpoint(url, ours):
    assert is_our_hook(url) is ours


class Headers(dict):
    def get(self, key, default=None):  # case-insensitive, as requests' headers are
        return {k.lower(): v for k, v in self.items()}.get(key.lower(), default)


@pytest.mark.parametrize("status, headers, seconds", [
    (200, {}, 0.0),
    (200, {"RateLimit-Limit": "600", "RateLimit-Remaining": "300", "RateLimit-Reset": "1010"},
     0.0),
    (200, {"RateLimit-Limit": "600", "RateLimit-Remaining": "60", "RateLimit-Reset": "1010"},
     10.0),
    (200, {"ratelimit-limit": "5", "ratelimit-remaining": "1", "ratelimit-reset": "1003"}, 3.0),
    (200, {"RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": "999"},
     0.0),  # already reset by our clock
    (429, {"Retry-After": "7", "RateLimit-Reset": "1060"}, 7.0),
    (429, {"RateLimit-Remaining": "0", "RateLimit-Reset": "1004"}, 4.0),
    (429, {}, 1.0),
])
def test_calls_pause_before_the_quota_is_gone_and_as_long_as_a_429_asks(status, headers,
                                                                        seconds):
    pause = rate_limits.pause(Headers(headers), status=status, now=1000.0)
    assert pause.seconds == pytest.approx(seconds)
    assert bool(pause.reason) == (seconds > 0 or status == 429)


@pytest.mark.parametrize("skew", [-300.0, 0.0, 300.0])
def test_the_reset_is_timed_by_gitlabs_clock_not_ours(skew):
    """RateLimit-Reset is a Unix time on GitLab's clock. Ours 5 minutes behind made a
    10-second wait 310 s, more than a call may wait: every pass ended as soon as the quota ran
    low; 5 minutes ahead, no pause at all, and the 429s came. The answer's Date header (RFC
    9110: the time on the server's clock) times the reset."""
    gitlab_now = 1_700_000_000.0
    headers = Headers({"Date": "Tue, 14 Nov 2023 22:13:20 GMT", "RateLimit-Limit": "600",
                       "RateLimit-Remaining": "6", "RateLimit-Reset": str(int(gitlab_now) + 10)})
    pause = rate_limits.pause(headers, status=200, now=gitlab_now + skew)
    assert pause.seconds == pytest.approx(10.0)


@pytest.mark.parametrize("value, seconds", [
    ("30", 30.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None),
    ("Tue, 14 Nov 2023 23:13:20 GMT", 3600.0),  # an HTTP-date, an hour past GitLab's Date
    ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # already past
])
def test_retry_after_is_read_in_seconds_or_as_an_http_date_on_gitlabs_clock(value, seconds):
    """RFC 9110 10.2.3: Retry-After = HTTP-date / delay-seconds. A front's maintenance 503 may
    give the date; python-gitlab reads the header with int() and raised ValueError on it."""
    headers = Headers({"Date": "Tue, 14 Nov 2023 22:13:20 GMT", "Retry-After": value})
    assert rate_limits.retry_after(headers, now=1_700_000_000.0 + 500) == seconds


def test_a_name_is_looked_up_again_at_its_time_or_once_its_lookup_is_old_never_later():
    at = resolve_phase("team/app")  # its time in each RESOLVE_SECONDS
    assert resolve_phase("Team/App") == at
    ref = ProjectRef("team/app", 7, "platform/app", resolved_at=RESOLVE_SECONDS + at)
    assert resolution_due(None, 1000.0)
    assert not resolution_due(ref, ref.resolved_at)
    assert not resolution_due(ref, ref.resolved_at + RESOLVE_SECONDS - 1)
    assert resolution_due(ref, ref.resolved_at + RESOLVE_SECONDS)
    assert resolution_due(ref, ref.resolved_at - 1)  # the clock set back: not kept for ever
    early = ProjectRef("team/app", 7, "platform/app", resolved_at=RESOLVE_SECONDS + at - 10)
    assert not resolution_due(early, early.resolved_at + 9)
    assert resolution_due(early, early.resolved_at + 10)  # its time came: not 900 s later


def test_names_looked_up_in_one_pass_fall_due_spread_each_once_a_period():
    """After a start every name is looked up in the first pass; due all at once again, the
    lookups came as one burst every RESOLVE_SECONDS (GitLab's rate limits, a slow pass)."""
    names = [f"group{n}/app{n}" for n in range(60)]
    known = {n: ProjectRef(n, 1, n, resolved_at=0.0) for n in names}
    lookups_per_pass, lookups_per_name = [], dict.fromkeys(names, 0)
    for now in range(120, 10 * RESOLVE_SECONDS + 1, 120):  # passes of 120 s
        due = [n for n in names if resolution_due(known[n], float(now))]
        for n in due:
            known[n] = ProjectRef(n, 1, n, resolved_at=float(now))
            lookups_per_name[n] += 1
        lookups_per_pass.append(len(due))
    assert max(lookups_per_pass) <= len(names) // 3, lookups_per_pass
    assert set(lookups_per_name.values()) <= {10, 11}


def test_the_heads_kept_by_path_are_the_projects_only_if_it_never_left_that_path():
    same = ProjectRef("team/app", 7, "Team/App", resolved_at=0)
    assert memory_name(same) == "id:7" and not same.renamed and path_memory_adoptable(same)
    assert not path_memory_adoptable(ProjectRef("team/app", 7, "platform/app", 0))
    assert not path_memory_adoptable(ProjectRef("team/app", 7, "team/app", 0, followed=True))


def test_a_renamed_projects_heads_go_by_every_route_then_by_those_of_its_old_path_only():
    """As its webhooks' pushes first (a push some route matches under the new path is built
    by that route, as the webhook built it: one build key); a push none matches, which the
    webhook answered "no route", by the route that named the old path, under the new path."""
    star = Route(project="*", ref="refs/tags/*", job="tags")
    routes = (star,) + ROUTES
    moved = ProjectRef("team/app", 7, "platform/app", resolved_at=0)
    assert routes_for(ProjectRef("team/app", 7, "Team/App", 0), routes) == routes
    effective = routes_for(moved, routes)
    assert effective[:3] == routes
    assert [(r.project, r.ref, r.job) for r in effective[3:]] == [
        ("platform/app", "refs/heads/*", "build"), ("platform/app", "refs/tags/v*", "release")]
    assert kinds_needed("platform/app", routes) == {EventKind.TAG_PUSH}
    assert kinds_needed("platform/app", effective) == {EventKind.PUSH, EventKind.TAG_PUSH}
    [tag, branch] = decide("platform/app", [Head("refs/tags/v1", A), Head("refs/heads/x", B)],
                           routes=effective, built=(), baseline=(), received_at=0)
    assert (tag.request.job, tag.request.project) == ("tags", "platform/app")
    assert (branch.request.job, branch.request.project) == ("build", "platform/app")
    webhook = parse_gitlab_push("Push Hook", {
        "ref": "refs/heads/x", "after": B, "checkout_sha": B, "user_username": "ann",
        "project": {"path_with_namespace": "platform/app"}})
    assert branch.commit == push_commit_key(webhook)  # the run mark a later route's webhook
    assert route_push(webhook, routes, commit=branch.commit).reason.startswith("no route")

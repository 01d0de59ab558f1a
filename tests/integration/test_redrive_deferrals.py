"""A burst: many builds wait (the template's cap reached), and re-drives overlap: a release's
job, the next release's, the reconcile pass's, each provision's once-more. A pass that meets a
build whose lease another task holds (that task is provisioning it, and settles it: placed, or
back to waiting) leaves it to that task. Measured on real parts (a GitLab push to the webhook,
the worker's mover, RQ, a real redis-server, kmock over HTTP and the Jenkins fake), as counts of
lines, errors and Redis reads, not as time:

- such a deferral is no error: counted, every waiting build of every overlapping pass was a
  provision error, and CIProvisioningFailing (errors over errors plus agents made, > 0.5 for
  15 minutes) paged through a long burst in which nothing failed;
- it is no warning line per build per pass (a worker under a burst logged thousands).
"""

import json
import logging
import threading

import pytest

from tests.integration.test_job_refusals import (  # noqa: F401 (the fixture)
    OURS, app, run_worker)
from tests.integration.test_concurrent_provisions import (  # noqa: F401 (the fixture)
    PODS, work_while, world)
from tests.integration.test_placement_on_cluster import push
from tests.integration.test_pod_templates import push as pod_templates_push
from tests.integration.test_push_to_pod import NAMESPACE, PUSH
from tests.support.app import (  # noqa: F401 (the fixture)
    GITLAB_TOKEN, app_on_cluster, one_template_config, production_env)
from tests.support.fault_proxy import FaultProxy
from tests.support.kmock_cluster import _write_kubeconfig
from service.app import create_app
from tests.support.monitoring import wait_until
from workers import runtime
from workers.adapters.lease import RENEWED, stale_seconds
from workers.engine import redrive, tasks

WAITING = 30  # the template's cap is 2: every build after the first two waits


def provision_errors(app) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('ci_autoscaler_errors_total{component="provision"'))


def test_builds_another_task_is_provisioning_are_left_to_it_quietly_and_cheaply(
        app, kube, jenkins_fake, caplog):
    jenkins_fake.add_job("build", parameters=OURS)
    client = app.test_client()
    keys = [push(client, n) for n in range(2 + WAITING)]
    run_worker(app)
    rt = runtime.current()
    waiting = rt.capacity.waiting()
    assert len(waiting) == WAITING and set(waiting) < set(keys)
    # Another pass is at work on them (a re-drive a release queued, on another worker thread
    # or process): it holds their leases while it decides each.
    leases = [tasks.provision_lease(rt, key) for key in waiting]
    assert all(lease.acquire() for lease in leases)
    errors_before = provision_errors(app)

    with caplog.at_level(logging.INFO, logger="ci_autoscaler"):
        result = redrive.redrive(rt)

    assert result == {"placed": 0, "waiting": WAITING}
    assert rt.capacity.waiting() == waiting  # every one still waits, for the holder to settle
    # none of them is an error: 30 counted before the fix
    assert provision_errors(app) - errors_before == 0
    # no warning per build: 30 lines before the fix; one line for the pass
    warnings = [r for r in caplog.records
                if r.levelno >= logging.WARNING and r.name == "ci_autoscaler.tasks"]
    assert warnings == [], [r.getMessage() for r in warnings]
    deferred = [r for r in caplog.records if getattr(r, "deferred", None)]
    assert [r.deferred for r in deferred] == [WAITING]
    for lease in leases:
        lease.release()


UNCAPPED = one_template_config("""
cpu: {min: "1", default: "1", max: "1"}
memory: {min: 1Gi, default: 1Gi, max: 1Gi}
""")
CHUNK = 4  # CI_AUTOSCALER_PROVISION_CONCURRENCY: builds a re-drive tries at once


def waiting_with_room(app_on_cluster, kube, jenkins_fake, count: int = WAITING):
    """Builds waiting, then a node joins with room for every one of them: the next re-drive
    places them all. (the runtime, the builds waiting in their order)"""
    app = app_on_cluster(UNCAPPED, namespace=NAMESPACE, nodes=(("node-a", "4", "16Gi"),),
                         CI_AUTOSCALER_PROVISION_CONCURRENCY=str(CHUNK))
    jenkins_fake.add_job("build", parameters=OURS)
    client = app.test_client()
    keys = [push(client, n) for n in range(count + 2)]
    run_worker(app)
    rt = runtime.current()
    waiting = rt.capacity.waiting()
    assert len(waiting) >= count - 2 and set(waiting) < set(keys)
    kube.create_node("node-b", cpu="64", memory="256Gi")
    wait_until(lambda: "node-b" in [n.name for n in rt.view.snapshot()],
               timeout=60, what="the node seen")
    return rt, waiting


def test_a_re_drive_while_jenkins_is_down_stops_after_the_chunk_that_found_it_down(
        app_on_cluster, kube, jenkins_fake):
    """Room freed for many waiting builds (a node joined) while Jenkins restarts (503 to
    every call). Every build a pass tried made its calls, each retried within the call
    (workers.adapters.retry: 4 attempts, backoff): a pass of W builds made W x 4 calls to a
    Jenkins that was not serving, and on a slow one (a 10 s timeout each) a pass of a few
    hundred builds outlasted RQ's job timeout and was killed. The first chunk that finds it
    down ends the pass; the others keep their place in the line for the next re-drive (the
    reconcile pass runs one every pass)."""
    rt, waiting = waiting_with_room(app_on_cluster, kube, jenkins_fake)
    jenkins_fake.fail_next(503, times=100_000)  # Jenkins restarting: every call
    calls_before = len(jenkins_fake.requests)

    redrive.redrive(rt)

    calls = len(jenkins_fake.requests) - calls_before
    assert rt.capacity.waiting() == waiting  # none lost, the line's order kept
    assert 0 < calls <= CHUNK * 4, calls  # one chunk's calls, each retried: 116 before


def zrange_calls(redis) -> int:
    """ZRANGE commands the redis-server has run so far (INFO commandstats)."""
    return int(redis.info("commandstats").get("cmdstat_zrange", {}).get("calls", 0))


def test_a_re_drive_whose_builds_all_fail_reads_the_waiting_set_once(
        app_on_cluster, kube, jenkins_fake):
    """Jenkins answers 500 to every call (not a sign it is down: a pass goes on to the next
    builds). Each build whose provision failed so looked whether it still waits by reading
    the whole waiting set: a pass of W such builds read W x W keys."""
    rt, waiting = waiting_with_room(app_on_cluster, kube, jenkins_fake, count=12)
    jenkins_fake.fail_next(500, times=100_000)
    before = zrange_calls(rt.state.redis)

    redrive.redrive(rt)

    assert rt.capacity.waiting() == waiting
    # the pass's own read of the line and the capacity state's: 12 more before
    assert zrange_calls(rt.state.redis) - before <= 3


def test_a_re_drive_while_the_api_server_does_not_answer_stops_after_that_chunk(
        world, kube, jenkins_fake, monkeypatch):
    """The same with the API server behind a load balancer that has no healthy server (502
    to every call; a read timeout or a refused connection is the same error): each build
    tried made its pod create 4 times."""
    monkeypatch.setenv("CI_AUTOSCALER_PROVISION_CONCURRENCY", str(CHUNK))
    app, proxy = world(nodes=0)
    client = app.test_client()
    keys = [pod_templates_push(client, i) for i in range(WAITING)]
    work_while(app, lambda: None)
    rt = runtime.current()
    assert sorted(rt.capacity.waiting()) == sorted(keys)
    kube.create_node("node-0", cpu="64", memory="256Gi")
    wait_until(lambda: [n.name for n in rt.view.snapshot()] == ["node-0"],
               timeout=60, what="the node seen")
    proxy.fail_next("POST", PODS, status=502, times=100_000)
    calls_before = proxy.requests

    redrive.redrive(rt)

    calls = proxy.requests - calls_before
    assert len(rt.capacity.waiting()) == WAITING  # none lost
    assert 0 < calls <= CHUNK * 4 + 8, calls  # one chunk's creates, each retried


def test_a_re_drive_the_api_server_throttles_stops_after_that_chunk(
        world, kube, jenkins_fake, monkeypatch):
    """The API server's priority and fairness refusing our calls (429 Too Many Requests,
    Retry-After 1: k8s.io/apiserver/pkg/server/filters/priority-and-fairness.go and
    maxinflight.go, tooManyRequests; our calls share one priority level, so every one is
    refused alike). The pass went on to every waiting build, each pod create retried 4
    times: a throttled API server got W x 4 creates more, and a pass of hundreds outlasted
    RQ's job timeout."""
    monkeypatch.setenv("CI_AUTOSCALER_PROVISION_CONCURRENCY", str(CHUNK))
    app, proxy = world(nodes=0)
    client = app.test_client()
    keys = [pod_templates_push(client, i) for i in range(WAITING)]
    work_while(app, lambda: None)
    rt = runtime.current()
    kube.create_node("node-0", cpu="64", memory="256Gi")
    wait_until(lambda: [n.name for n in rt.view.snapshot()] == ["node-0"],
               timeout=60, what="the node seen")
    proxy.fail_next("POST", PODS, status=429, times=100_000)
    calls_before = proxy.requests

    redrive.redrive(rt)

    calls = proxy.requests - calls_before
    assert sorted(rt.capacity.waiting()) == sorted(keys)  # none lost
    assert 0 < calls <= CHUNK * 4 + 8, calls  # one chunk's creates, each retried


def two_slots_freed(world):
    """Builds waiting on a cap of 2, the two placed ones released: room for two. The runtime."""
    app, _ = world(max_line="maxConcurrent: 2")
    client = app.test_client()
    keys = [pod_templates_push(client, i) for i in range(2 + WAITING)]
    work_while(app, lambda: None)
    rt = runtime.current()
    placed = [k for k in keys if rt.state.get_build(k)["status"] == "triggered"]
    assert len(placed) == 2
    for key in placed:  # two slots free
        tasks.release(rt, key, rt.state.get_build(key)["agent"], "build_completed")
    return rt


def test_a_re_drive_job_while_another_runs_leaves_the_line_to_it_which_goes_once_more(
        world, kube, jenkins_fake, caplog):
    """A release's re-drive job runs while the previous release's job is still deciding its
    chunk (here held on its build's trigger): it walked the whole line beside it, trying the
    builds that pass held. Now it leaves the line to the running pass, which queues one
    more pass at its end for the room the second job came for."""
    rt = two_slots_freed(world)
    arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
    first = threading.Thread(target=redrive.redrive_waiting, daemon=True)
    first.start()
    try:
        assert arrived.wait(60), "the first pass triggered nothing"
        with caplog.at_level(logging.INFO, logger="ci_autoscaler"):
            redrive.redrive_waiting()  # the next release's job, meanwhile
    finally:
        release.set()
        first.join(60)
    passes = [r for r in caplog.records if r.getMessage() == "re-drove waiting builds"]
    assert passes == [], [(r.placed, r.still_waiting, r.deferred) for r in passes]
    # the first pass queued one more, for the room the second came for
    assert rt.state.redis.exists(rt.state.prefix + "redrive-pending")
    assert len(jenkins_fake.builds) == 4


def test_a_re_drive_job_early_in_a_long_pass_is_still_gone_once_more_for(
        world, kube, jenkins_fake, monkeypatch):
    """The mark a job leaves for the running pass lived as long as the pending flag (60 s),
    while a pass in a burst runs up to RQ's job timeout (5 min): a job that came early in a
    long pass had its mark lapse before the pass ended, which then queued no pass for the
    room that job came for (a template found full earlier in the pass stays full for it):
    it waited for the next reconcile pass. Scaled down here: the flag's life 1 s, the pass
    held past it."""
    monkeypatch.setattr(redrive, "REDRIVE_PENDING_SECONDS", 1)
    rt = two_slots_freed(world)
    arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
    first = threading.Thread(target=redrive.redrive_waiting, daemon=True)
    first.start()
    try:
        assert arrived.wait(60), "the first pass triggered nothing"
        redrive.redrive_waiting()  # the next release's job, early in the first pass
        probe = rt.state.prefix + "test-probe"
        rt.state.redis.set(probe, "1", ex=redrive.REDRIVE_PENDING_SECONDS)
        wait_until(lambda: not rt.state.redis.exists(probe), timeout=10,
                   what="the pending flag's life over")
        queued = redrive_jobs(rt)
    finally:
        release.set()
        first.join(60)
    assert not first.is_alive()
    # the first pass queued one more, for the room the second came for: none before
    assert redrive_jobs(rt) == queued + 1


def redrive_jobs(rt) -> int:
    """Re-drive jobs in the queue."""
    return sum(job.func_name == redrive.REDRIVE_TASK for job in rt.state.queue.get_jobs())


def test_a_re_drive_job_takes_the_line_from_a_pass_whose_worker_died(
        world, kube, jenkins_fake):
    """The worker running a pass is killed (SIGKILL, an OOM kill in a burst): its lease,
    renewed no more, held the line for its whole minute, and every re-drive job in that
    minute left at once (the mark it left read by no pass). Once unrenewed for as long as a
    provision's lease is taken for its dead holder's (workers.adapters.lease free_if_stale),
    the next job takes it over and runs the pass."""
    rt = two_slots_freed(world)
    seconds = rt.settings.provision_lease_seconds
    unrenewed = stale_seconds(seconds) + 1  # its last renewal that long ago
    rt.state.redis.set(rt.state.prefix + redrive.RUNNING, RENEWED + "dead",
                       px=int((seconds - unrenewed) * 1000))

    result = redrive.redrive_waiting()

    assert result["placed"] == 2, result  # 0 before: left to the dead pass


THREE_TEMPLATES = """
routes:
  - {project: "*", ref: "refs/heads/other", job: build, template: other}
  - {project: "*", ref: "refs/heads/third", job: build, template: third}
  - {project: "*", ref: "refs/*", job: build, template: small}
templates:
  small:
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
  other:
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
  third:
    cpu: {min: 250m, default: 250m, max: 250m}
    memory: {min: 256Mi, default: 256Mi, max: 256Mi}
"""


def push_to(client, n: int, ref: str) -> str:
    body = json.loads(PUSH)
    body["ref"], body["checkout_sha"] = ref, f"{n + 1:040x}"
    body["after"] = body["checkout_sha"]
    response = client.post("/webhooks/gitlab", json=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": GITLAB_TOKEN,
        "Idempotency-Key": f"push-{n}"})
    assert response.status_code == 202, response.json
    return response.json["build_key"]


@pytest.fixture
def three_templates(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """8 builds of template small, then 8 of other and 4 of third, waiting for a node, which
    joins: the next re-drive has room for all. (the runtime, the proxy before the API
    server, small's builds, the others')"""
    proxy = FaultProxy(kube.url, ratio=0.0, seed=0, kubernetes=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    _write_kubeconfig(kubeconfig, proxy.url)
    config = tmp_path / "config.yaml"
    config.write_text(THREE_TEMPLATES)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=config, namespace=NAMESPACE, KUBECONFIG=str(kubeconfig),
                   CI_AUTOSCALER_PROVISION_CONCURRENCY=str(CHUNK))
    runtime.install(None)
    try:
        app = create_app()
        client = app.test_client()
        small = [push_to(client, n, "refs/heads/main") for n in range(8)]
        other = [push_to(client, 8 + n, "refs/heads/other") for n in range(8)] + \
            [push_to(client, 16 + n, "refs/heads/third") for n in range(4)]
        work_while(app, lambda: None)
        rt = runtime.current()
        assert sorted(rt.capacity.waiting()) == sorted(small + other)  # no node yet
        kube.create_node("node-0", cpu="64", memory="256Gi")
        wait_until(lambda: [n.name for n in rt.view.snapshot()] == ["node-0"],
                   timeout=60, what="the node seen")
        yield rt, proxy, small, other
    finally:
        runtime.install(None)
        proxy.stop()


def test_a_template_whose_pods_the_api_server_does_not_answer_holds_no_other_back(
        three_templates):
    """The creates of one template's pods go unanswered (an admission webhook that selects
    them by label hangs: each create times out; a 502 here, the same error) while the API
    server serves every other call. Its builds came first. Every pass stopped after the
    chunk of that template's builds: the other templates' builds, behind it in the line,
    were never re-driven for as long as that webhook hung. Now that template is left for
    the rest of the pass (as a full one is) and the others go on."""
    rt, proxy, small, other = three_templates
    proxy.fail_next("POST", PODS, status=502, times=100_000,
                    body_has=b'"ci-autoscaler.io/template": "small"')

    redrive.redrive(rt)

    # the other templates' builds placed: none before (the pass ended after the first chunk)
    assert sorted(rt.capacity.waiting()) == sorted(small)


def test_a_second_template_unanswered_ends_the_pass(three_templates):
    """Every create unanswered (the API server's, not one template's pods): the pass ends
    once a second template's builds met it, two chunks in, not once every template's had
    (a chunk of timeouts each: many templates, and the pass outlasted RQ's job timeout)."""
    rt, proxy, small, other = three_templates
    proxy.fail_next("POST", PODS, status=502, times=100_000)
    calls_before = proxy.requests

    redrive.redrive(rt)

    calls = proxy.requests - calls_before
    assert sorted(rt.capacity.waiting()) == sorted(small + other)  # none lost
    # two chunks' creates, each retried: 72 when every template's chunk was tried
    assert 0 < calls <= 2 * (CHUNK * 4 + 8), calls

"""Warm pools during a rolling upgrade, or a chart change of a template's image: for a while
processes on the old file and on the new one run pool passes side by side (the reconcile
leader's, and each worker's after a claim: workers.warm.tasks). Each took the other's agents
for stale (made under another pod fingerprint), retired them and made its own: pods and
Jenkins nodes made and deleted pass after pass until the last old process ended. The newest
file announced wins (workers.adapters.warm_specs).

Two processes' runtimes on one Redis, kmock over HTTP and the Jenkins fake: the same
adapters, each with its own file, as two processes of two releases have."""

import dataclasses
import time

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_warm_agents import (  # noqa: F401 (the fixture)
    CONFIG, app, pod_creations, pod_names, pool_of)
from workers import runtime
from workers.config.config_file import parse_file_config
from workers.adapters.warm_specs import KIND_SIZES, WarmSpecs
from workers.core.warm_pool import WarmState
from workers.warm import pool

NEW_IMAGE = CONFIG.replace("  small:\n", "  small:\n    image: eclipse-temurin:21-jdk\n")
NO_POOL = CONFIG.replace("    warm: {min: 1, max: 2, idleSeconds: 600}\n", "")
assert NEW_IMAGE != CONFIG != NO_POOL


def on_file(rt, text: str):
    """The runtime of a process on this file, started now."""
    return dataclasses.replace(rt, config=parse_file_config(text), started_at=time.time())


def online(rt, kube, jenkins_fake) -> set[str]:
    """The kubelet runs the starting agents' pods, their agents connect, the leader's poll
    marks them idle; the idle agents' names."""
    for entry in pool_of(rt):
        if entry.state == WarmState.STARTING:
            kube.set_pod_phase(NAMESPACE, entry.name, "Running", node="node-a")
            jenkins_fake.connect_agent(entry.name)
    pool.notice_online(rt)
    return {e.name for e in pool_of(rt) if e.state == WarmState.IDLE}


def test_old_and_new_files_passes_do_not_retire_each_others_agents(app, kube, jenkins_fake):
    kube.add_node("node-a", cpu="8", memory="32Gi")
    old = runtime.current()
    pool.run(old)
    [first] = online(old, kube, jenkins_fake)
    new = on_file(old, NEW_IMAGE)  # the new release's first process starts
    assert pool.run(new)["warm_started"] == 1  # made as the file says now
    [made] = online(new, kube, jenkins_fake)
    assert first not in pod_names(kube)  # retired (warm_changed)
    image = {c["name"]: c["image"] for c in kube.pod(NAMESPACE, made)["spec"]["containers"]}
    assert image["jnlp"] == "eclipse-temurin:21-jdk", image
    creates = pod_creations(kube)
    for _ in range(3):  # the old leader's pass, a new worker's, the old one's again
        for rt in (old, new):
            pool.run(rt)
            assert {e.name for e in pool_of(rt)} == {made}
    assert made in pod_names(kube) and pod_creations(kube) == creates


def test_a_pool_added_in_the_new_file_is_not_retired_by_the_old_files_processes(
        app, kube, jenkins_fake):
    """The old file has no pool of the template: its reconcile pass retires the agents of a
    template without one (retire_unpooled), the new file's pass makes them again."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    old = runtime.current()
    new = on_file(old, CONFIG)
    old = on_file(old, NO_POOL)
    old = dataclasses.replace(old, started_at=new.started_at - 60)  # started before it
    pool.run(new)
    [made] = online(new, kube, jenkins_fake)
    for _ in range(2):
        assert pool.retire_unpooled(old, old.cluster.list_pods(), 0) == 0
        pool.run(new)
        assert {e.name for e in pool_of(new)} == {made}
    assert made in pod_names(kube)


def test_the_new_files_leader_at_the_longest_reconcile_interval_stays_the_winner(redis_conn):
    """The reconcile loop may run every 120 s (`--interval`, at most 120) and a leader that
    dies is replaced after its lease's 3 intervals: the new file's announcements, made by its
    leader's passes, come that far apart. An old file's worker pass between two of them found
    the new one lapsed (after 2 minutes), took the pool for its own file's (retiring the new
    file's agents and making its own), and the next leader pass took it back: the churn
    again."""
    specs = WarmSpecs(redis_conn, prefix="cia:")
    old_start, new_start = 1000.0, 5000.0
    assert specs.announce("small", "old", since=old_start, now=5000.0) == "old"
    assert specs.announce("small", "new", since=new_start, now=5010.0) == "new"
    # a pass at the longest interval, and one of a leader that took over (the pass's steps
    # before its warm pools take some seconds)
    leader_passes = [5010.0 + 125.0, 5010.0 + 125.0 + 3 * 120.0 + 30.0]
    seen = 5010.0
    for at in leader_passes:
        # an old worker's pass (after a claim) just before the new leader's next one
        assert specs.announce("small", "old", since=old_start, now=at - 1) == "new", at - seen
        assert specs.announce("small", "new", since=new_start, now=at) == "new"
        seen = at


# The new release changes the pool's sizes only (its `warm:` min and max), not its pods
BIGGER_POOL = CONFIG.replace("warm: {min: 1, max: 2, idleSeconds: 600}",
                             "warm: {min: 2, max: 3, idleSeconds: 600}")
assert BIGGER_POOL != CONFIG


def test_a_pool_resized_in_the_new_file_is_not_shrunk_back_by_the_old_files_passes(
        app, kube, jenkins_fake):
    """An operator raises a pool's `min` (1 -> 2) in a chart upgrade. Its pods are as before,
    so the pod fingerprint matched and both files' passes counted as the pool's: the new one
    made the second agent, the old one (its min 1) retired it as beyond its target, the new
    one made it again... a pod and a Jenkins node made and deleted on every pair of passes
    until the last old process ended. The newest file's sizes win, as its pods do."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    old = runtime.current()
    pool.run(old)
    [first] = online(old, kube, jenkins_fake)
    new = on_file(old, BIGGER_POOL)  # the new release's first process starts
    assert pool.run(new)["warm_started"] == 1  # its min: 2
    kept = online(new, kube, jenkins_fake)
    assert first in kept and len(kept) == 2  # the old agent is not retired: its pod is as before
    creates = pod_creations(kube)
    for _ in range(3):  # the old leader's pass, a new worker's, the old one's again
        for rt in (old, new):
            done = pool.run(rt)
            assert done["warm_retired"] == done["warm_started"] == 0, done
            assert {e.name for e in pool_of(rt)} == kept
    assert kept <= pod_names(kube) and pod_creations(kube) == creates


def test_a_pools_sizes_and_its_pod_spec_are_announced_apart(redis_conn):
    """A release before the pool's sizes were announced compares its agents' pod fingerprints
    with the announced pod spec: had the sizes been folded into that announcement, it would
    have taken every agent of the new release for one of another pod spec and retired it."""
    specs = WarmSpecs(redis_conn, prefix="cia:")
    assert specs.announce("small", "pods", since=1000.0, now=5000.0) == "pods"
    assert specs.announce("small", "sizes-new", since=5000.0, now=5001.0,
                          kind=KIND_SIZES) == "sizes-new"
    assert specs.announce("small", "pods", since=1000.0, now=5002.0) == "pods"
    assert specs.announce("small", "sizes-old", since=1000.0, now=5003.0,
                          kind=KIND_SIZES) == "sizes-new"


def test_a_pool_is_kept_by_someone_when_a_third_file_changes_its_sizes_back_to_older_pods(
        app, kube, jenkins_fake):
    """Three files within LIVE_SECONDS of each other: the running one (A), a new image (B)
    rolled out over it, and a change on top (C: the old image back, a bigger pool) while A's
    processes still run or lapse. B's pods won (started after A's, whose pods C's share), C's
    sizes won (the newest): B's processes, their sizes not the newest, and C's, their pods
    not, each left the pool to the other. No one filled it: an agent gone was not made again
    until B's last process had been gone 7 minutes. The sizes are only weighed among the
    processes whose pods agree (B's, its pods the newest, keep the pool until then)."""
    kube.add_node("node-a", cpu="8", memory="32Gi")
    a = runtime.current()
    pool.run(a)
    online(a, kube, jenkins_fake)
    b = on_file(a, NEW_IMAGE)
    assert pool.run(b)["warm_started"] == 1  # its pods win: A's agent retired (warm_changed)
    [made] = online(b, kube, jenkins_fake)
    c = dataclasses.replace(on_file(a, BIGGER_POOL), started_at=b.started_at + 30)
    for rt in (c, a, b):
        assert pool.run(rt)["warm_started"] == 0  # B's pool as it should be: one agent
    kube.set_pod_phase(NAMESPACE, made, "Failed", node="node-a")  # its pod ends
    started = sum(pool.run(rt)["warm_started"] for rt in (a, b, c))
    assert started == 1, started  # made again, by B's processes (its file's min)
    [again] = {e.name for e in pool_of(b)}
    image = {c["name"]: c["image"] for c in kube.pod(NAMESPACE, again)["spec"]["containers"]}
    assert image["jnlp"] == "eclipse-temurin:21-jdk", image

"""The live agents /metrics exports, counted by the reconcile pass and kept current by the
builds written since (workers.adapters.agent_counts), on a real redis-server: the same
answer as reading every record (pull_reads.live_agents, the reference) after any sequence of
writes, a drift corrected by the next recount, and a scrape of thousands of live builds that
reads a few records, not all of them."""

import random

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_placement_on_cluster import cluster, push  # noqa: F401 (fixture)
from tests.support.app import work
from tests.support.monitoring import wait_until
from workers import runtime
from workers.engine import reconcile
from workers.adapters import agent_counts, pull_reads
from workers.adapters.redis_state import RedisState

STATUSES = ("queued", "waiting", "pod_created", "triggered", "running", "done", "retained",
            "released", "failed")
TEMPLATES = ("small", "large", None)


def _write(state: RedisState, rnd: random.Random, key: str) -> None:
    """One write as the engine or the web makes them: a status, a pull error of this pod or
    another, an agent placed again, the error forgotten, a template."""
    choice = rnd.randrange(5)
    if choice == 0:
        state.update_build(key, status=rnd.choice(STATUSES))
    elif choice == 1:
        state.update_build(key, pull_error="ErrImagePull: 429",
                           pull_error_agent=rnd.choice(("pod-a", "pod-b")))
    elif choice == 2:
        state.update_build(key, agent=rnd.choice(("pod-a", "pod-b")))
    elif choice == 3:
        state.update_build(key, pull_error=None, pull_error_agent=None)
    else:
        state.advance_build(key, status=rnd.choice(STATUSES))


def _reference(state: RedisState):
    return agent_counts.tally(pull_reads.live_agents(state))


@pytest.mark.parametrize("seed", range(6))
def test_the_kept_counts_agree_with_every_record_read_after_any_writes(redis_conn, seed):
    rnd = random.Random(seed)
    state = RedisState(redis_conn)
    keys = [f"b{n}" for n in range(40)]
    for key in keys:
        template = rnd.choice(TEMPLATES)
        state.update_build(key, status=rnd.choice(STATUSES), agent="pod-a",
                           **({"template": template} if template else {}))
    assert agent_counts.read(state) is None  # before any recount: the caller reads all
    assert agent_counts.recount(state) == sum(_reference(state).values())
    assert agent_counts.read(state) == _reference(state)
    for step in range(200):
        _write(state, rnd, rnd.choice(keys))
        assert agent_counts.read(state) == _reference(state), step
        if step % 50 == 49:
            agent_counts.recount(state)
            assert redis_conn.scard("cia:agents-dirty") == 0
            assert agent_counts.read(state) == _reference(state), step


@pytest.mark.parametrize("seed", range(4))
def test_builds_written_while_the_recount_reads_are_counted_as_they_are_now(redis_conn, seed):
    """The recount reads every record in chunks, Redis serving others in between: a build
    written after its record was read (or one that arrived after the live set was read) is
    counted as it is when the counts are put in place, not as it was read."""
    rnd = random.Random(seed)
    state = RedisState(redis_conn)
    keys = [f"b{n}" for n in range(40)]
    for key in keys:
        state.update_build(key, status=rnd.choice(STATUSES), agent="pod-a", template="small")
    agent_counts.recount(state)
    read = agent_counts.read_all(state)
    for _ in range(30):  # meanwhile, on other connections
        _write(state, rnd, rnd.choice(keys + ["new-1", "new-2"]))
    agent_counts.install(state, read)
    assert redis_conn.scard("cia:agents-dirty") == 0
    assert agent_counts.read(state) == _reference(state)
    assert {k.decode() for k in redis_conn.keys("cia:agent-counts:new:*")} == set()


def _exported(app) -> dict[tuple[str, str], float]:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    return {(s.labels["template"], s.labels["phase"]): s.value
            for f in text_string_to_metric_families(text) if f.name == "ci_autoscaler_agents"
            for s in f.samples if s.value}


def test_a_drift_in_the_kept_counts_is_corrected_by_the_reconcile_pass(cluster):
    """A count Redis lost (a failover to a replica that missed a write) or one a version that
    marked nothing left wrong: /metrics shows it only until the next pass recounts."""
    client = cluster.test_client()
    for n in range(3):
        push(client, n)
    work(cluster)
    rt = runtime.current()
    reconcile.reconcile_once(rt)
    truth = {(t, p): float(n) for (t, p, _), n in _reference(rt.state).items()}
    assert sum(truth.values()) == 3
    assert _exported(cluster) == truth
    template, phase = next(iter(truth))
    rt.state.redis.hincrby("cia:agent-counts", f"{phase}|0|{template}", 4)  # the drift
    rt.state.redis.hset("cia:agent-counts", "running|0|other", 2)
    assert _exported(cluster) != truth

    reconcile.reconcile_once(rt)

    assert _exported(cluster) == {(t, p): float(n)
                                  for (t, p, _), n in _reference(rt.state).items()} == truth


def test_counts_no_pass_refreshes_expire_and_a_scrape_reads_every_record(redis_conn):
    """The counts are right only while every writer marks agents-dirty and a pass recounts.
    A reconcile rolled back to (or, in a rolling upgrade, led again by) a version without
    counts writes builds without marking them, and never recounts: the counts it left were
    read forever, its releases never taken off them (ghost agents on the dashboard for
    good). Kept counts expire unless a pass renews them; then a scrape reads every record."""
    state = RedisState(redis_conn)
    state.update_build("b1", status="running", template="small", agent="pod-a")
    state.update_build("b2", status="running", template="small", agent="pod-a")
    agent_counts.recount(state, ttl_seconds=1)
    assert agent_counts.read(state) == {("small", "running", False): 2}
    # the old version's release: its _write_build marked nothing
    redis_conn.hset("cia:build:b1", "status", "released")
    redis_conn.srem("cia:live-agents", "b1")

    wait_until(lambda: agent_counts.read(state) is None, timeout=10,
               what="the counts no pass renewed expired")

    assert _reference(state) == {("small", "running", False): 1}
    agent_counts.recount(state)  # a pass of this version again: counts, kept
    assert agent_counts.read(state) == _reference(state)
    assert redis_conn.ttl("cia:agent-counts") > 0


class _Interleaved:
    """A redis-py pipeline whose execute first lets `between` run (writes and scrapes on
    other connections): a recount's every round trip with Redis serving others before it."""

    def __init__(self, pipe, between):
        self.pipe, self.between = pipe, between

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __enter__(self):
        self.pipe.__enter__()
        return self

    def __exit__(self, *exc):
        return self.pipe.__exit__(*exc)

    def execute(self, *args, **kwargs):
        self.between()
        return self.pipe.execute(*args, **kwargs)


@pytest.mark.parametrize("seed", range(12))
def test_writes_and_scrapes_between_every_round_trip_of_a_recount(redis_url, redis_conn,
                                                                    monkeypatch, seed):
    """Each round trip of a recount (the live set, each chunk of records, the new keys, the
    install script) with builds written and a scrape taken before it: every scrape, and
    the counts installed, agree with every record read then (no build counted twice, none
    missed, whichever generation a scrape reads and whatever was written since)."""
    rnd = random.Random(seed)
    monkeypatch.setattr(agent_counts, "READ_CHUNK", 3)
    writer = RedisState(redis_conn)
    recounter = RedisState(redis.Redis.from_url(redis_url))
    keys = [f"b{n}" for n in range(25)]
    for key in keys[:15]:
        writer.update_build(key, status=rnd.choice(STATUSES), agent="pod-a",
                            template=rnd.choice(TEMPLATES[:2]))

    def between():
        for _ in range(rnd.randrange(4)):
            _write(writer, rnd, rnd.choice(keys))
            scraped = agent_counts.read(writer)
            assert scraped is None or scraped == _reference(writer)

    pipeline, evaluate = recounter.redis.pipeline, recounter.redis.eval
    recounter.redis.pipeline = lambda *a, **k: _Interleaved(pipeline(*a, **k), between)
    recounter.redis.eval = lambda *a, **k: (between(), evaluate(*a, **k))[1]
    for _ in range(6):
        agent_counts.recount(recounter)
        assert agent_counts.read(writer) == _reference(writer)


@pytest.mark.parametrize("seed", range(12))
def test_a_recount_between_a_scrapes_two_reads_is_read_again(redis_url, redis_conn, seed):
    """A scrape reads the counts and the builds written since, then those builds' records
    and what each was counted as: a recount between the two (with writes before and after
    it) put other counts in place. The scrape agrees with every record read after it."""
    rnd = random.Random(seed)
    writer = RedisState(redis.Redis.from_url(redis_url))
    scraper = RedisState(redis_conn)
    keys = [f"b{n}" for n in range(20)]
    for key in keys:
        writer.update_build(key, status=rnd.choice(STATUSES), agent="pod-a",
                            template=rnd.choice(TEMPLATES[:2]))
    agent_counts.recount(writer)
    for key in rnd.sample(keys, 8):
        _write(writer, rnd, key)
    round_trips = []

    def between():
        round_trips.append(1)
        if len(round_trips) == 2:  # after the counts and the dirty set were read
            for key in rnd.sample(keys, 3):
                _write(writer, rnd, key)
            agent_counts.recount(writer)
            for key in rnd.sample(keys, 3):
                _write(writer, rnd, key)

    pipeline = redis_conn.pipeline
    redis_conn.pipeline = lambda *a, **k: _Interleaved(pipeline(*a, **k), between)
    scraped = agent_counts.read(scraper)
    redis_conn.pipeline = pipeline

    assert len(round_trips) == 4  # the two reads, then both again
    assert scraped == _reference(writer)

"""The warm agents' store on a real redis-server: a claim takes an idle agent that covers
the build's size, atomically (racing claims never share one), and a claimed agent is never
given up."""

import threading

import pytest

from workers.adapters.warm_store import WarmStore
from workers.core.cluster import Resources
from workers.core.warm_pool import WarmState

SIZE = Resources(1000, 2**30)


@pytest.fixture
def store(redis_conn):
    return WarmStore(redis_conn, prefix="warm-test:")


def idle(store, *names, size=SIZE, template="maven"):
    for name in names:
        store.add(template, name, size=size, node="node-a", now=100.0)
        assert store.mark_idle(template, name)


def test_a_claim_takes_an_idle_agent_that_covers_the_build_never_a_smaller_one(store):
    store.add("maven", "starting-one", size=SIZE, node="node-a", now=100.0)
    assert store.claim("maven", size=SIZE, build_key="b1") is None  # not online yet
    idle(store, "small", size=Resources(1000, 2**29))
    assert store.claim("maven", size=SIZE, build_key="b1") is None  # too little memory
    idle(store, "big", size=Resources(2000, 2**31))
    got = store.claim("maven", size=SIZE, build_key="b1")  # bigger covers it
    assert got is not None and got.name == "big" and got.build == "b1"
    assert got.state == WarmState.CLAIMED and got.node == "node-a"
    assert got.size == Resources(2000, 2**31)
    assert store.claim("gradle", size=SIZE, build_key="b2") is None  # per template
    assert [e.name for e in store.agents("maven") if e.state == WarmState.IDLE] == ["small"]


def test_cpu_counts_only_when_asked_for_as_a_hint_asks(store):
    idle(store, "few-cores", size=Resources(500, 2**31))
    assert store.claim("maven", size=SIZE, build_key="hinted", cpu=True) is None
    got = store.claim("maven", size=SIZE, build_key="history", cpu=False)
    assert got is not None and got.name == "few-cores"


def test_a_claim_takes_the_first_of_its_order_still_idle_else_the_oldest(store):
    idle(store, "w1", "w2", "w3")
    store.add("maven", "w4", size=SIZE, node="node-b", now=100.0)  # not idle
    got = store.claim("maven", size=SIZE, build_key="b1", order=["w4", "w3", "w1"])
    assert got is not None and got.name == "w3"
    # its order taken meanwhile (w3 by b1): the one idle the longest that covers it
    got = store.claim("maven", size=SIZE, build_key="b2", order=["w3"])
    assert got is not None and got.name == "w1"


def test_a_claim_never_takes_an_agent_it_is_told_to_avoid_not_even_the_oldest(store):
    """The agents on a node that takes no new pod (workers.warm.claim.preferred): left out
    of the order, and of the fallback to the one idle the longest too."""
    idle(store, "w1", "w2")
    assert store.claim("maven", size=SIZE, build_key="b1", avoid=["w1", "w2"]) is None
    got = store.claim("maven", size=SIZE, build_key="b1", order=["w1"], avoid=["w1"])
    assert got is not None and got.name == "w2"
    assert store.claim("maven", size=SIZE, build_key="b2", avoid=["w1"]) is None
    assert [e.name for e in store.agents("maven") if e.state == WarmState.IDLE] == ["w1"]


def test_an_agent_keeps_what_placement_expects_its_build_to_use(store):
    store.add("maven", "w1", size=SIZE, node="node-a", now=100.0,
              in_flight=Resources(1800, 2**30))
    store.add("maven", "w2", size=SIZE, node="node-a", now=100.0)
    got = {e.name: e.in_flight for e in store.agents("maven")}
    assert got == {"w1": Resources(1800, 2**30), "w2": SIZE}


def test_a_retried_claim_gets_the_same_agent_and_takes_no_second_one(store):
    idle(store, "w1", "w2")
    first = store.claim("maven", size=SIZE, build_key="b1")
    again = store.claim("maven", size=SIZE, build_key="b1")
    assert again.name == first.name
    states = {a.name: a.state for a in store.agents("maven")}
    assert sorted(states.values()) == [WarmState.CLAIMED, WarmState.IDLE]


def test_claims_racing_from_many_threads_take_each_agent_once(store, redis_url):
    import redis

    idle(store, "w1", "w2", "w3")
    barrier, won, lock = threading.Barrier(12), [], threading.Lock()

    def claim(i: int) -> None:
        own = WarmStore(redis.Redis.from_url(redis_url), prefix="warm-test:")
        barrier.wait(timeout=30)
        got = own.claim("maven", size=SIZE, build_key=f"b{i}")
        if got is not None:
            with lock:
                won.append((got.name, f"b{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(name for name, _ in won) == ["w1", "w2", "w3"]
    assert len({build for _, build in won}) == 3
    holders = {a.name: a.build for a in store.agents("maven")}
    assert holders == dict(won)


def test_only_an_idle_agent_is_given_up(store):
    idle(store, "w1", "w2")
    claimed = store.claim("maven", size=SIZE, build_key="b1")
    assert not store.give_up("maven", claimed.name)
    other = "w2" if claimed.name == "w1" else "w1"
    assert store.give_up("maven", other)
    assert not store.give_up("maven", other)  # gone already
    assert [a.name for a in store.agents("maven")] == [claimed.name]
    assert store.claim("maven", size=SIZE, build_key="b2") is None


def test_agents_are_listed_oldest_first_per_template(store):
    store.add("maven", "later", size=SIZE, node="n", now=200.0)
    store.add("maven", "earlier", size=SIZE, node="n", now=100.0)
    store.add("gradle", "g", size=SIZE, node="n", now=100.0)
    assert [a.name for a in store.agents("maven")] == ["earlier", "later"]
    every = store.all_agents(["maven", "gradle", "none"])
    assert [a.name for a in every["gradle"]] == ["g"] and every["none"] == []

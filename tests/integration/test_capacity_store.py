"""The reservations in Redis (workers.adapters.capacity_store), on a real redis-server."""

from workers.adapters.capacity_store import TOO_BIG_NOTED, TOO_BIG_NOTED_SECONDS, CapacityStore
from workers.core.capacity import CapacityState
from workers.core.cluster import Resources

ROOM = Resources(4000, 8 << 30)
AGENT = Resources(1000, 1 << 30)


def test_a_reservation_taken_again_since_it_was_read_is_not_released(redis_conn):
    store = CapacityStore(redis_conn, prefix="t:")
    assert store.reserve(node="node-a", build_key="one", size=AGENT, capacity=ROOM)
    assert store.reserve(node="node-a", build_key="two", size=AGENT, capacity=ROOM)
    read = {key: raw for key, (_, _, raw) in store.reservation_records().items()}
    # a new provision of "one" reserves again, on another node, before the release
    assert store.reserve(node="node-b", build_key="one", size=AGENT, capacity=ROOM)
    assert store.release_unchanged(read) == 1
    assert store.reservations() == {"one": ("node-b", AGENT)}
    assert store.release_unchanged({}) == 0


def test_a_reservation_that_read_all_is_refused_beside_one_placed_since(redis_conn):
    """Another worker process reserved on the node after the decision read its reservations:
    with `read_all` the room is not taken (the node may no longer be the idlest), without it
    (a last try) it is; a reservation on another node changes nothing."""
    store = CapacityStore(redis_conn, prefix="t:")
    assert store.reserve(node="node-a", build_key="one", size=AGENT, capacity=ROOM)
    read = {k: raw for k, (_, _, raw) in store.reservation_records().items()}
    assert store.reserve(node="node-a", build_key="two", size=AGENT, capacity=ROOM)
    assert store.reserve(node="node-b", build_key="other", size=AGENT, capacity=ROOM)
    assert not store.reserve(node="node-a", build_key="three", size=AGENT, capacity=ROOM,
                             read=read, read_all=True)
    read = {k: raw for k, (node, _, raw) in store.reservation_records().items()
            if node == "node-a"}
    assert store.reserve(node="node-a", build_key="three", size=AGENT, capacity=ROOM,
                         read=read, read_all=True)
    assert store.reserve(node="node-a", build_key="four", size=AGENT, capacity=ROOM,
                         read={}, read_all=False)


def test_builds_a_quota_holds_are_not_waiting_ahead_until_they_wait_for_nodes(redis_conn):
    """Sizing counts the builds waiting ahead (core.sizing): one a ResourceQuota holds wants
    room in the quota, not on nodes, and is left out; once re-driven it waits for nodes (or
    is placed), and counts as any other."""
    store = CapacityStore(redis_conn, prefix="t:")
    store.add_waiting("room", 1.0)
    store.add_waiting("held", 2.0, on_quota=True)
    store.add_waiting("later", 3.0)
    assert [store.waiting_ahead_of(t) for t in (1.0, 2.5, 3.5)] == [0, 1, 2]
    store.add_waiting("held", 2.0)  # re-driven: now it waits for room on nodes
    assert store.waiting_ahead_of(3.5) == 3
    store.add_waiting("held", 2.0, on_quota=True)
    store.remove_waiting("held")  # placed
    assert store.waiting_ahead_of(3.5) == 2 and store.waiting() == ["room", "later"]
    store.add_waiting("held", 2.0)
    assert store.waiting_ahead_of(3.5) == 3  # no mark of its quota wait is left


def test_the_oldest_wait_that_pages_leaves_out_the_builds_a_pause_holds(redis_conn):
    """CIBuildsWaitingTooLong pages on the oldest wait but those of an admin's pause (a
    ResourceQuota's pods: 0, wait reason paused); a paused build re-driven to wait for
    anything else counts again, and a placed one leaves no mark behind."""
    store = CapacityStore(redis_conn, prefix="t:")
    assert store.oldest_unpaused_since() is None
    store.add_waiting("paused", 1.0, on_quota=True, paused=True)
    assert store.oldest_unpaused_since() is None and store.oldest_waiting_since() == 1.0
    assert store.waiting_ahead_of(5.0) == 0  # held by the quota: not sized against either
    for n in range(150):  # more than one page of the script's scan
        store.add_waiting(f"p{n}", 2.0 + n / 1000, on_quota=True, paused=True)
    store.add_waiting("held", 3.0, on_quota=True)
    assert store.oldest_unpaused_since() == 3.0
    store.add_waiting("paused", 1.0)  # re-driven: it waits for room on nodes now
    assert store.oldest_unpaused_since() == 1.0
    store.add_waiting("paused", 1.0, on_quota=True, paused=True)
    store.remove_waiting("paused")  # placed
    store.add_waiting("paused", 1.0)
    assert store.oldest_unpaused_since() == 1.0  # no mark of its pause is left
    for key in ["paused", "held"] + [f"p{n}" for n in range(150)]:
        store.remove_waiting(key)
    assert [k for k in redis_conn.keys("t:waiting*")] == []


def test_pause_marks_follow_the_wait_reasons_read_on_each_refresh(redis_conn):
    """The refresh of the capacity state sets the marks from the builds' wait reasons: one
    paused before the mark existed gets it, one no longer paused loses it, and a build that
    stopped waiting meanwhile gets none."""
    store = CapacityStore(redis_conn, prefix="t:")
    store.add_waiting("old-pause", 1.0, on_quota=True)  # paused, marked before the upgrade
    store.add_waiting("lifted", 2.0, on_quota=True, paused=True)
    store.add_waiting("room", 3.0)
    store.mark_paused({"old-pause": True, "lifted": False, "room": False, "placed": True})
    assert store.oldest_unpaused_since() == 2.0
    store.mark_paused({"old-pause": True, "lifted": True, "room": False})
    assert store.oldest_unpaused_since() == 3.0
    assert redis_conn.zrange("t:waiting-paused", 0, -1, withscores=True) == [
        (b"old-pause", 1.0), (b"lifted", 2.0)]


def test_builds_too_big_are_told_once_and_those_long_gone_are_not_kept(redis_conn):
    """Each build bigger than a reference node is logged once (write_state names it the first
    time). What noted them dropped nothing while any build was too big: one template too big
    for the nodes, on a busy repository, left a key per push in Redis for as long as it was
    so. A build named by no write for TOO_BIG_NOTED_SECONDS is dropped now."""
    store = CapacityStore(redis_conn, prefix="t:")
    state = CapacityState(waiting=0, shortfall=Resources(0, 0), nodes_needed=0,
                          unplaceable=0, reference=Resources(4000, 16 << 30))

    def write(keys: list[str], now: float) -> list[str]:
        return store.write_state(state, [], reasons={}, metrics_available=True,
                                 too_big=dict.fromkeys(keys, "too big"), now=now)

    t0 = 1_700_000_000.0
    assert write(["stays"], t0) == ["stays"]
    assert write(["stays", "b"], t0 + 10) == ["b"]
    assert write(["b", "stays"], t0 + 20) == []  # however many processes write it
    told = [write(["stays", f"push-{n}"], t0 + 30 + n) for n in range(200)]
    assert told == [[f"push-{n}"] for n in range(200)]
    later = t0 + 230 + TOO_BIG_NOTED_SECONDS
    assert write(["stays"], later) == []  # named all along: never told again
    assert redis_conn.zrange("t:" + TOO_BIG_NOTED, 0, -1) == [b"stays"]
    assert write([], later + 10) == []
    assert write(["stays"], later + 20) == []  # one write's view left it out: not told again
    assert write(["b"], later + 30) == ["b"]  # gone an hour and more: a new wait, told

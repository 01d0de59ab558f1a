"""The reservations in Redis (workers.adapters.capacity_store), on a real redis-server."""

from workers.adapters.capacity_store import CapacityStore
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

"""The atomic reservation counts what an agent pod holds beside cpu and memory (a GPU,
ephemeral-storage), on a real redis-server: two builds that both decided on a node's one free
GPU cannot both reserve it, and reservations of an older release (no such holds) stay
readable during a rolling upgrade."""

import threading

from workers.adapters.capacity_store import CapacityStore
from workers.core.cluster import Holding, Resources
from workers.core.fit import Held

GPU = "nvidia.com/gpu"
AGENT = Resources(1000, 1 << 30)
ONE_GPU = Held(0, 0, ((GPU, 1),))
# The node's room: plenty of cpu and memory, one GPU free (placement.reservation_room).
ROOM = Holding(8000, 32 << 30, Held(0, 0, ((GPU, 1),)))


def test_two_builds_that_decided_on_one_free_gpu_reserve_it_once(redis_conn):
    store = CapacityStore(redis_conn, prefix="g:")
    barrier, won = threading.Barrier(2), []

    def reserve(key: str) -> None:  # both read the node with its GPU free, then reserve
        barrier.wait()
        if store.reserve(node="gpu-1", build_key=key, size=AGENT, capacity=ROOM,
                         holds=ONE_GPU):
            won.append(key)

    threads = [threading.Thread(target=reserve, args=(k,)) for k in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(won) == 1, won
    [(node, size)] = store.reservations().values()
    assert node == "gpu-1" and size == Holding(1000, 1 << 30, ONE_GPU)
    # cpu and memory were never short: a build with no GPU still has the node's room
    assert store.reserve(node="gpu-1", build_key="plain", size=AGENT, capacity=ROOM)
    # the GPU build's reservation released: its GPU is free again
    store.release(*won)
    assert store.reserve(node="gpu-1", build_key="three", size=AGENT, capacity=ROOM,
                         holds=ONE_GPU)


def test_a_released_reservation_leaves_no_holds_behind(redis_conn):
    store = CapacityStore(redis_conn, prefix="g:")
    assert store.reserve(node="gpu-1", build_key="one", size=AGENT, capacity=ROOM,
                         holds=ONE_GPU)
    read = {key: raw for key, (_, _, raw) in store.reservation_records().items()}
    assert store.release_unchanged(read) == 1
    assert redis_conn.hlen("g:reservation-holds") == 0
    assert store.reserve(node="gpu-1", build_key="two", size=AGENT, capacity=ROOM,
                         holds=ONE_GPU)


def test_an_older_releases_reservation_is_read_as_before_and_holds_nothing(redis_conn):
    """A reservation written by a worker of the release before this one (node|cpu|mem|expiry,
    no holds) during a rolling upgrade: read as cpu and memory, renewed and released as ever."""
    store = CapacityStore(redis_conn, prefix="g:")
    seconds, _ = redis_conn.time()
    redis_conn.hset("g:reservations", "old", f"gpu-1|1000|{1 << 30}|{seconds + 60}.000")
    assert store.reservations() == {"old": ("gpu-1", AGENT)}
    assert type(store.reservations()["old"][1]) is Resources
    # its GPU, if any, is counted by its pod in the cache, not here: the GPU stays reservable
    assert store.reserve(node="gpu-1", build_key="new", size=AGENT, capacity=ROOM,
                         holds=ONE_GPU)
    # and a holds entry left by a release whose reservation was taken again since, by an
    # older worker on another node, is not counted for it
    redis_conn.hset("g:reservation-holds", "old", f"gpu-2|1000|{1 << 30}#0;{GPU}=1")
    assert store.reservations()["old"] == ("gpu-1", AGENT)


def test_ephemeral_storage_reserved_in_flight_is_not_promised_twice(redis_conn):
    """kube-scheduler counts ephemeral-storage requests as it counts cpu (NodeResourcesFit):
    two agents of 6Gi each on a node with 10Gi left do not both fit."""
    store = CapacityStore(redis_conn, prefix="g:")
    room = Holding(8000, 32 << 30, Held(0, 10 << 30, ()))
    disk = Held(0, 6 << 30, ())
    assert store.reserve(node="n", build_key="one", size=AGENT, capacity=room, holds=disk)
    assert not store.reserve(node="n", build_key="two", size=AGENT, capacity=room, holds=disk)
    assert store.reserve(node="n", build_key="two", size=AGENT, capacity=room,
                         holds=Held(0, 4 << 30, ()))


def test_a_host_port_reserved_in_flight_is_not_promised_twice(redis_conn):
    """kube-scheduler's NodePorts filter: a pod binding hostPort 9100 on any address does not
    fit beside one binding it (TCP) on the node; another port, protocol or address does.
    Two workers that both decided on the node before either pod existed: one reserves it.
    The reservation reads back with its ports (the in-flight view counts them)."""
    store = CapacityStore(redis_conn, prefix="g:")
    room = Holding(8000, 32 << 30, Held())
    port = Held(host_ports=frozenset({("TCP", "", 9100)}))
    assert store.reserve(node="n", build_key="one", size=AGENT, capacity=room, holds=port)
    assert not store.reserve(node="n", build_key="two", size=AGENT, capacity=room, holds=port)
    assert not store.reserve(node="n", build_key="two", size=AGENT, capacity=room,
                             holds=Held(host_ports=frozenset({("TCP", "10.0.0.7", 9100)})))
    for other in (("UDP", "", 9100), ("TCP", "", 9101)):
        assert store.reserve(node="n", build_key=f"{other}", size=AGENT, capacity=room,
                             holds=Held(host_ports=frozenset({other})))
    assert store.reserve(node="m", build_key="two", size=AGENT, capacity=room, holds=port)
    assert store.reservations()["one"] == ("n", Holding(AGENT.cpu_millis, AGENT.memory_bytes,
                                                        port))


def test_a_nodes_last_pod_slot_is_reserved_once(redis_conn):
    """kube-scheduler counts pods against allocatable `pods` (NodeResourcesFit: Too many
    pods): a node with one slot left beside its pods (placement.hold_room, "pods/1"), which
    two workers decided on before either pod existed, takes one reservation; with two
    slots, two; a node whose pod limit is unknown, any."""
    store = CapacityStore(redis_conn, prefix="g:")
    one, two = Holding(8000, 32 << 30, Held(pods=1)), Holding(8000, 32 << 30, Held(pods=2))
    assert store.reserve(node="n", build_key="a", size=AGENT, capacity=one, holds=Held(pods=1))
    assert not store.reserve(node="n", build_key="b", size=AGENT, capacity=one,
                             holds=Held(pods=1))
    assert store.reserve(node="n", build_key="b", size=AGENT, capacity=two, holds=Held(pods=1))
    assert store.reserve(node="n", build_key="c", size=AGENT, capacity=Resources(8000, 32 << 30))
    # a build reserving again where it holds the reservation already is not counted twice
    assert store.reserve(node="n", build_key="a", size=AGENT, capacity=Holding(
        8000, 32 << 30, Held(pods=3)), holds=Held(pods=1))


def _previous_release_parse_holds(text: str) -> Held:
    """parse_holds of the release before hostPorts were reserved (main at 57965375^1),
    which a worker not yet replaced runs during a rolling upgrade, on every decision."""
    first, *rest = text.split(";")
    return Held(0, int(first or 0), tuple(sorted(
        (name, int(amount)) for name, amount in (part.rsplit("=", 1) for part in rest if part))))


def test_a_host_port_reservation_is_read_by_the_release_before(redis_conn):
    """During a rolling upgrade, the release before reads the holds this one writes: a
    hostPort part it cannot split as "name=amount" raised ValueError in its every decision
    while such a reservation lived. It reads the port as 0 of a resource no node has (none
    held), its GPUs as ever; this release reads the port back, and a port written without
    "=0" (ex18's first form) too."""
    store = CapacityStore(redis_conn, prefix="g:")
    room = Holding(8000, 32 << 30, Held(0, 0, ((GPU, 2),)))
    held = Held(0, 0, ((GPU, 1),), frozenset({("TCP", "", 9100)}))
    assert store.reserve(node="n", build_key="one", size=AGENT, capacity=room, holds=held)
    _, _, text = redis_conn.hget("g:reservation-holds", "one").decode().partition("#")
    old = _previous_release_parse_holds(text)
    assert dict(old.extended)[GPU] == 1 and sum(
        amount for name, amount in old.extended if name != GPU) == 0
    assert store.reservations()["one"] == ("n", Holding(AGENT.cpu_millis, AGENT.memory_bytes,
                                                        held))
    # the port still refuses a second reservation of it; the GPU left is still reservable
    assert not store.reserve(node="n", build_key="two", size=AGENT, capacity=room, holds=held)
    assert store.reserve(node="n", build_key="two", size=AGENT, capacity=room,
                         holds=Held(0, 0, ((GPU, 1),), frozenset({("TCP", "", 9101)})))
    redis_conn.hset("g:reservation-holds", "one", f"n|1000|{1 << 30}#0;{GPU}=1;hp/TCP//9100")
    assert store.reservations()["one"][1].held == held

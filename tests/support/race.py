"""A process for the reservation race: after a common start (a barrier), try to reserve one
slot per build key on the same node, as racing workers do."""


def reserve_all(redis_url: str, prefix: str, keys: list[str], barrier, results) -> None:
    import redis

    from workers.adapters.capacity_store import CapacityStore
    from workers.core.cluster import Resources

    store = CapacityStore(redis.Redis.from_url(redis_url), prefix=prefix)
    barrier.wait(timeout=60)
    won = [k for k in keys if store.reserve(node="node-a", build_key=k,
                                            size=Resources(1000, 2**30),
                                            capacity=Resources(20_000, 64 * 2**30))]
    results.put(won)


def take_all_slots(redis_url: str, prefix: str, keys: list[str], barrier, results) -> None:
    """After a common start, try to take an agent slot for each build of template "maven"
    (maxConcurrent 3, maxAgents 5), as racing workers do."""
    import redis

    from workers.adapters.capacity_store import SLOT_TAKEN, CapacityStore

    store = CapacityStore(redis.Redis.from_url(redis_url), prefix=prefix)
    barrier.wait(timeout=60)
    results.put([k for k in keys if store.take_slot(build_key=k, template="maven",
                                                    max_concurrent=3, max_agents=5)
                 == SLOT_TAKEN])

"""The worker's watched cache keeps up with the cluster while Redis does not answer.

RoomFreedWatch (workers.engine.room_watch) sees every pod of the cluster that is deleted or
ends on a node and queues a re-drive of the waiting builds, which reads and writes Redis. It
ran in the watch thread: with Redis stopped (SIGSTOP: a hung server, or a partition, as in a
failover), each such pod held that thread for the client's socket timeout (redis-py's 5 s),
and the snapshot that every placement decides from fell that far behind, pod after pod. A
real redis-server, kmock over HTTP, the worker's ClusterWatch and its Redis client as the
runtime makes it (redis.Redis.from_url, redis-py's timeouts)."""

import os
import signal
import threading
import time

import redis

from tests.support.monitoring import wait_until
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.kube_snapshot import ClusterWatch
from workers.adapters.redis_state import RedisState
from workers.engine import redrive
from workers.engine.room_watch import RoomFreedWatch

OTHERS, NODE = "data-team", "node-a"
ENDING = [f"etl-{i}" for i in range(4)]


def test_pods_ending_while_redis_hangs_still_reach_the_snapshot(kube, own_redis):
    kube.add_node(NODE, cpu="8", memory="32Gi")
    for name in ENDING:
        kube.add_pod(OTHERS, name, node=NODE, requests=[{"cpu": "500m", "memory": "1Gi"}])
    connection = redis.Redis.from_url(own_redis.url)
    state, capacity = RedisState(connection), CapacityStore(connection)
    capacity.add_waiting("a-waiting-build", time.time())
    watch = ClusterWatch(api_client=kube.api_client(service_account="ci-agents"),
                         metrics_interval_seconds=60)
    watch.add_pod_listener(RoomFreedWatch(state=state, capacity=capacity))
    watch.start()
    pid = int((own_redis.directory / "redis.pid").read_text())
    try:
        assert watch.wait_synced(10)
        connection.ping()  # the pool's connection made: the next command waits for an answer
        os.kill(pid, signal.SIGSTOP)
        for name in ENDING:
            kube.delete_pod(OTHERS, name)
        # fails without the fix: one pod per 5 s reached the snapshot
        wait_until(lambda: watch.gone(OTHERS, ENDING) == set(ENDING), timeout=3,
                   what=lambda: f"every deletion applied: {sorted(watch.gone(OTHERS, ENDING))}")
    finally:
        os.kill(pid, signal.SIGCONT)
        try:
            # Redis back: the room freed is acted on (the next call after the one timed out)
            wait_until(lambda: connection.exists(state.prefix + "redrive-pending"), timeout=15,
                       what="a re-drive queued once Redis answers")
        finally:
            watch.stop()


def _acting() -> bool:
    return any(t.name == "room-freed" for t in threading.enumerate())


def test_a_pod_frees_its_room_once_whatever_its_later_events(own_redis):
    """An ended pod's later updates (its deletion's timestamp, finalizers removed) and its
    deletion each re-drove every waiting build again: on a cluster of batch Jobs, passes back
    to back for nothing (redrive-asked moved, and each provision ending waiting queued one
    more). Counted once: at its end, or at its deletion when it was not seen ended."""
    connection = redis.Redis.from_url(own_redis.url)
    state, capacity = RedisState(connection), CapacityStore(connection)
    capacity.add_waiting("a-waiting-build", time.time())
    listener = RoomFreedWatch(state=state, capacity=capacity)

    def pod(name: str, phase: str, **meta) -> dict:
        return {"metadata": {"namespace": OTHERS, "name": name, "uid": f"uid-{name}", **meta},
                "spec": {"nodeName": NODE}, "status": {"phase": phase}}

    def settled() -> int:
        wait_until(lambda: not _acting(), timeout=10, what="the re-drive queued")
        return redrive.asked(state)

    listener("MODIFIED", pod("etl-0", "Running"))
    assert settled() == 0  # running: nothing freed
    listener("MODIFIED", pod("etl-0", "Succeeded"))
    assert settled() == 1
    listener("MODIFIED", pod("etl-0", "Succeeded", deletionTimestamp="2026-12-06T00:00:00Z"))
    listener("DELETED", pod("etl-0", "Succeeded"))
    assert settled() == 1  # its room was freed at its end
    listener("DELETED", pod("etl-1", "Running"))  # deleted while it ran: its room now
    assert settled() == 2

"""A running worker whose Redis comes to refuse its password (the password rotated and Redis
restarted with the new one, while the worker's environment still has the old) quits, as one
started with a refused password does (service.cli: exit 2), instead of waiting for ever.

redis-py makes a refused password (WRONGPASS, NOAUTH) an AuthenticationError, a
ConnectionError; RQ's read for a job, where an idle worker spends its time, waits out every
ConnectionError with its pauses (rq/worker/base.py dequeue_job_and_maintain_ttl), so the
worker waited there for good, its liveness file touched at each try: the pod was never
restarted (which reads the rotated Secret again), and nothing was built until a person
restarted it. workers.concurrency.redis_away said a refused password "still ends the loop".

Reached for real: a real redis-server's password changed (CONFIG SET requirepass) and the
worker's connections closed (CLIENT KILL), as a restart of Redis with the new password does.
Met first in RQ's maintenance (its registries' cleaning, right after "Listening on"; seen under
load) the refusal ended RQ's loop as "an unhandled exception", and the process exited 0.

Any other error that ends RQ's loop (it logs "found an unhandled exception, quitting" and
returns as if done) fails the process too: here an ACL that comes to deny the worker's user
its blocking read for a job (an operator's ACL edit), which no wait mends. Before, the
process exited 0: read as a clean stop.
"""

import signal
import subprocess
import sys
from pathlib import Path

import redis

from tests.support.monitoring import wait_until

ROOT = Path(__file__).resolve().parents[2]
OLD, NEW = "refused-old-password", "refused-new-password"
WORKER = """
import sys, redis
from workers.adapters.redis_state import SERIALIZER
from workers.concurrency.pool_worker import PoolWorker
PoolWorker(["refused"], connection=redis.Redis.from_url(sys.argv[1], socket_timeout=5),
           concurrency=2, serializer=SERIALIZER,
           dequeue_seconds=int(sys.argv[2]) if len(sys.argv) > 2 else 30).work(logging_level="INFO")
"""
QUIT_SECONDS = 20  # the worker's heartbeat meets the refusal within its first pauses (1, 2 s)


def test_an_idle_worker_whose_redis_comes_to_refuse_its_password_quits(own_redis, tmp_path):
    admin = redis.Redis(port=own_redis.port)
    admin.config_set("requirepass", OLD)
    admin = redis.Redis(port=own_redis.port, password=OLD)
    url = f"redis://:{OLD}@127.0.0.1:{own_redis.port}/0"
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen([sys.executable, "-c", WORKER, url], cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Listening on" in log.read_text(), timeout=30,
                   what="the worker waiting for jobs")
        admin.config_set("requirepass", NEW)
        admin.client_kill_filter(_type="normal", skipme=True)  # as Redis' restart closes them
        try:
            code = worker.wait(timeout=QUIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        text = log.read_text()
        assert code is not None, f"the worker still waits for a Redis that refuses it:\n{text}"
        assert code != 0, text
        assert "Redis refuses REDIS_URL's user or password (AuthenticationError)" in text, text
        assert OLD not in text and NEW not in text, text
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        redis.Redis(port=own_redis.port, password=NEW).config_set("requirepass", "")


def test_a_worker_whose_loop_quits_on_an_error_exits_non_zero(own_redis, tmp_path):
    admin = redis.Redis(port=own_redis.port)
    admin.acl_setuser("rqworker", enabled=True, passwords=["+worker-password"],
                      categories=["+@all"], keys=["*"], channels=["*"])
    url = f"redis://rqworker:worker-password@127.0.0.1:{own_redis.port}/0"
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        # its read for a job ends each second
        worker = subprocess.Popen([sys.executable, "-c", WORKER, url, "1"], cwd=ROOT,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "Listening on" in log.read_text(), timeout=30,
                   what="the worker waiting for jobs")
        admin.acl_setuser("rqworker", categories=["-@blocking"])  # its read for a job: NOPERM
        try:
            code = worker.wait(timeout=QUIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        text = log.read_text()
        assert code is not None, f"the worker did not quit on a denied read:\n{text}"
        assert "found an unhandled exception, quitting" in text, text
        assert code != 0, text
        assert "worker-password" not in text, text
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

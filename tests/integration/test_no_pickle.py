"""No pickle: every RQ job is JSON, and a worker refuses a job whose hash holds anything else
without running it (issue 17: a pickled object written into ``rq:job:*`` ran a command in the
worker when it read the job). On a real redis-server, with RQ's SimpleWorker and the production
failure handler."""

import json
import os
import pickle
import zlib

from rq import SimpleWorker
from rq.job import Job, JobStatus

from tests.integration.test_webhooks import gitlab
from workers.engine import jobs
from workers.adapters.redis_state import SERIALIZER
from workers.engine.intake import Mover


class _Planted:
    """What an attacker writes: unpickling it runs a shell command (creates `marker`)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _state(app):
    return app.extensions["ci_autoscaler"].state


def test_a_pushed_build_becomes_a_json_job(client, app):
    assert gitlab(client, **{"Idempotency-Key": "json-1"}).status_code == 202
    state = _state(app)
    Mover(state).drain()
    job_id = state.queue.job_ids[0]
    data = json.loads(zlib.decompress(state.redis.hget(f"rq:job:{job_id}", "data")))
    assert data[0] == "workers.tasks.provision_agent"
    assert data[3]["build"]["project"] == "hephaestustest/demo-repository"


def test_a_pickled_job_is_refused_without_running(client, app, tmp_path, caplog):
    marker, control = tmp_path / "pwned", tmp_path / "control"
    # The payload is live: unpickled, it runs its command.
    pickle.loads(pickle.dumps(_Planted(str(control))))
    assert control.exists()

    assert gitlab(client, **{"Idempotency-Key": "pickle-1"}).status_code == 202
    state = _state(app)
    Mover(state).drain()
    job_id = state.queue.job_ids[0]
    # An attacker with write access to Redis overwrites the job's data, as RQ stores it.
    state.redis.hset(f"rq:job:{job_id}", "data",
                     zlib.compress(pickle.dumps(_Planted(str(marker)))))

    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER)
    worker.push_exc_handler(jobs.failure_handler(app.extensions["ci_autoscaler"].metrics))
    worker.work(burst=True, with_scheduler=True)

    assert not marker.exists(), "the worker unpickled the planted job"
    job = Job.fetch(job_id, connection=state.redis, serializer=SERIALIZER)
    assert job.get_status() == JobStatus.FAILED  # refused, and not scheduled for a retry
    assert job_id in state.queue.failed_job_registry.get_job_ids()
    assert "job refused: its data is not JSON" in caplog.text


CALLED = []


def _gadget(*args):
    """Stands for whatever an attacker's hash names as a callback (RQ calls it with the job,
    the Redis connection and the exception)."""
    CALLED.append(args)


def test_a_job_naming_a_failure_callback_is_refused_without_calling_it(client, app):
    """TaskJob refuses a job naming a callback, but RQ then ran the job's failure callback,
    imported by the name in its hash (rq.worker Worker._finalize_failure): the refusal itself
    called whatever the attacker named."""
    assert gitlab(client, **{"Idempotency-Key": "callback-1"}).status_code == 202
    state = _state(app)
    Mover(state).drain()
    job_id = state.queue.job_ids[0]
    state.redis.hset(f"rq:job:{job_id}", "failure_callback_name", f"{__name__}._gadget")
    CALLED.clear()

    worker = SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER,
                          job_class=jobs.TaskJob)
    worker.push_exc_handler(jobs.failure_handler(app.extensions["ci_autoscaler"].metrics))
    worker.work(burst=True, with_scheduler=True)

    assert CALLED == [], "the planted callback ran"
    job = Job.fetch(job_id, connection=state.redis, serializer=SERIALIZER)
    assert job.get_status() == JobStatus.FAILED
    assert "DeserializationError" in job.latest_result().exc_string

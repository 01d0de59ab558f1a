"""A push's record on a live mover's claimed list after a Sentinel failover (workers.engine.
intake: Mover._convert_held), on real Redis, kmock over HTTP and the Jenkins fake."""

from rq import SimpleWorker

from tests.integration.test_placement_on_cluster import push
from tests.integration import test_reconcile_repairs as repairs
from tests.support.app import work
from workers.adapters.redis_state import SERIALIZER
from workers.engine.intake import Mover

app = repairs.app  # the fixture: the web app and its runtime, on kmock and the fake
MOVER = "held"


def test_a_held_record_whose_job_ran_on_the_lost_master_is_not_triggered_twice(
        app, jenkins_fake):
    """Replication is asynchronous (redis.io/docs/management/replication: a write the master
    answered may be lost in a failover). The mover's claim reached the replica; the job its
    script made, and what the job wrote, did not, yet a worker ran that job on the old master
    and Jenkins got the build. The promoted replica holds the record on the mover's list and
    nothing else of the build: the live mover makes its job again (the held-records fix), and
    its trigger must look for the build by its agent first, as a retried trigger does, not
    start the push a second time in Jenkins."""
    state = repairs.state_of(app)
    push(app.test_client(), 1)
    assert state.intake.claim(MOVER, 10)
    replica = {key: state.redis.dump(key) for key in state.redis.keys("*")}  # had the claim
    Mover(state, name=MOVER)._convert_all(state.intake.held(MOVER))  # on the old master
    SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER).work(burst=True)
    (build,) = jenkins_fake.builds
    jenkins_fake.start_build(build.queue_id)  # running: a second trigger is not merged into it
    state.redis.flushdb()  # failover: the promoted replica's dataset
    for key, value in replica.items():
        state.redis.restore(key, 0, value)
    mover = Mover(state, name=MOVER)
    mover._convert_held()
    assert state.intake.held(MOVER) == [] and state.queue.count == 1
    work(app)
    assert len(jenkins_fake.builds) == 1  # the run the old master's job started, alone
    [key] = state.live_builds()
    assert state.get_build(key)["queue_item"] == str(build.queue_id)


def test_a_held_record_that_made_no_job_is_triggered_once(app, jenkins_fake):
    """The usual case: the connection lost before the job's script ran. Jenkins has no
    such build, and the look-up first does not keep it from being triggered."""
    state = repairs.state_of(app)
    push(app.test_client(), 2)
    assert state.intake.claim(MOVER, 10)
    Mover(state, name=MOVER)._convert_held()
    work(app)
    assert len(jenkins_fake.builds) == 1

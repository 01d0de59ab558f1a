"""The reconcile pass's re-drive and the re-drive jobs share one line: one pass at a time,
cluster-wide (workers.engine.redrive RUNNING). The jobs took the line's lease; the reconcile
pass's re-drive did not, so every 15 s it walked the whole waiting line beside a job's pass
still deciding its chunk (a burst of releases), reading each build's record and trying its
lease, meeting the builds that pass held and racing it for the same room out of the line's
order. Real parts: redis-server, kmock over HTTP (through a proxy) and the Jenkins fake.
"""

import logging
import threading

from tests.integration.test_concurrent_provisions import world  # noqa: F401 (the fixture)
from tests.integration.test_redrive_deferrals import two_slots_freed
from workers.engine import reconcile, redrive


def _redrives(caplog) -> list[tuple]:
    return [(r.placed, r.still_waiting, r.deferred) for r in caplog.records
            if r.getMessage() == "re-drove waiting builds"]


def test_a_reconcile_pass_while_a_re_drive_job_runs_leaves_the_line_to_it(
        world, kube, jenkins_fake, caplog):  # noqa: F811 (the fixture)
    rt = two_slots_freed(world)
    arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
    first = threading.Thread(target=redrive.redrive_waiting, daemon=True)
    first.start()
    try:
        assert arrived.wait(60), "the job's pass triggered nothing"
        with caplog.at_level(logging.INFO, logger="ci_autoscaler"):
            result = reconcile.reconcile_once(rt)  # the reconcile pass, meanwhile
            assert _redrives(caplog) == []  # it deferred the builds the job's pass held
    finally:
        release.set()
        first.join(60)
    assert not first.is_alive()
    assert result["placed"] == 0, result
    # the job's pass queued one more, for whatever room the reconcile pass came for
    assert rt.state.redis.exists(rt.state.prefix + "redrive-pending")
    assert len(jenkins_fake.builds) == 4  # the two released, the two placed now: no more


def test_a_re_drive_job_during_the_reconcile_pass_s_re_drive_leaves_the_line_to_it(
        world, kube, jenkins_fake, caplog):  # noqa: F811 (the fixture)
    """The other way round: a release's job comes while the reconcile pass re-drives; it
    leaves the line to the pass, which queues one more job at its end for that room."""
    rt = two_slots_freed(world)
    arrived, release = jenkins_fake.hold_next("/job/build/buildWithParameters")
    passed: dict = {}
    first = threading.Thread(target=lambda: passed.update(reconcile.reconcile_once(rt)),
                             daemon=True)
    first.start()
    try:
        assert arrived.wait(60), "the reconcile pass triggered nothing"
        assert redrive.redrive_waiting() == {"placed": 0, "waiting": 0}
    finally:
        release.set()
        first.join(60)
    assert not first.is_alive()
    assert passed["placed"] == 2, passed
    assert rt.state.redis.exists(rt.state.prefix + "redrive-pending")
    assert len(jenkins_fake.builds) == 4

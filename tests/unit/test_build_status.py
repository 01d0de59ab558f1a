"""The order a build's status moves in (workers.core.build_status)."""

import pytest

from workers.core.build_status import FINISHED, PROGRESS, BuildStatus, moves_forward


def test_every_status_is_either_on_the_way_or_finished():
    assert set(PROGRESS) | FINISHED == set(BuildStatus) and not set(PROGRESS) & FINISHED


@pytest.mark.parametrize("earlier", range(len(PROGRESS)))
def test_a_status_moves_to_itself_and_later_ones_never_back(earlier):
    for later in range(earlier, len(PROGRESS)):
        assert moves_forward(PROGRESS[earlier], PROGRESS[later])
        assert not moves_forward(PROGRESS[later], PROGRESS[earlier]) or later == earlier


@pytest.mark.parametrize("done", sorted(FINISHED))
def test_a_finished_build_takes_no_status_and_any_build_may_finish(done):
    assert not any(moves_forward(done, status) for status in BuildStatus)
    assert all(moves_forward(status, done) for status in PROGRESS)


def test_a_build_with_no_status_takes_any():
    assert moves_forward(None, BuildStatus.TRIGGERED)

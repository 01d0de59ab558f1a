"""workers.core.oom_settle: when a final commit status waits for an OOM kill's record, and
that it never waits past OOM_SETTLE_SECONDS after the build's end."""

import pytest

from workers.core.commit_status import OOM_FIELD, State
from workers.core.oom_settle import OOM_SETTLE_SECONDS, may_wait_for_oom

END = 1_000_000.0
ABORTED = {"status": "done", "result": "ABORTED", "finished_at": str(END)}


@pytest.mark.parametrize("record,state,waits", [
    (ABORTED, State.CANCELED, True),
    ({**ABORTED, "result": "FAILURE"}, State.FAILED, True),
    # released without a result (its settle passed): canceled would pre-empt the kill too
    ({"status": "released", "released_at": str(END)}, State.CANCELED, True),
    ({**ABORTED, OOM_FIELD: "1073741824"}, State.FAILED, False),  # recorded: nothing to wait
    ({**ABORTED, "result": "SUCCESS"}, State.SUCCESS, False),  # a SUCCESS stands
    ({**ABORTED, "fail_reason": "PodLost"}, State.FAILED, False),  # told before an OOM
    ({**ABORTED, "status": "running"}, State.RUNNING, False),  # not final: GitLab moves it
    ({"status": "done", "result": "ABORTED"}, State.CANCELED, False),  # no time: no wait
])
def test_a_final_status_that_the_kill_would_change_waits(record, state, waits):
    assert may_wait_for_oom(record, state, now=END + 1) is waits


def test_it_waits_no_longer_than_the_bound_after_the_build_s_end():
    assert may_wait_for_oom(ABORTED, State.CANCELED, now=END + OOM_SETTLE_SECONDS - 1)
    assert not may_wait_for_oom(ABORTED, State.CANCELED, now=END + OOM_SETTLE_SECONDS)
    # Jenkins' COMPLETED counts, not the release's later time (a release retried for minutes)
    late = {**ABORTED, "released_at": str(END + OOM_SETTLE_SECONDS)}
    assert not may_wait_for_oom(late, State.CANCELED, now=END + OOM_SETTLE_SECONDS)

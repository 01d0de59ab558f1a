"""The label probe's pure rules (workers.core.label_probe): its name, and when a pass makes
or deletes it."""

import pytest
from hypothesis import given, strategies as st

from workers.core.keys import agent_name, is_agent_name_of, is_own_agent_name
from workers.core.label_probe import NO_LABEL_WHY, ProbeAction, decide, probe_name
from workers.core.ports import QueueItem

PROBE = probe_name("")
OURS = "CI_AUTOSCALER_BUILD_KEY"


def item(i: int, why: str, *, ours: bool = False, blocked: bool = False) -> QueueItem:
    return QueueItem(id=i, job="app", why=why, parameters={OURS: "k"} if ours else {},
                     blocked=blocked)


NAMED = "There are no nodes with the label ‘maven’"


@pytest.mark.parametrize("nodes, queue, known, action", [
    ([], [], (), ProbeAction.NONE),
    ([], [item(1, NO_LABEL_WHY)], (), ProbeAction.CREATE),
    ([], [item(1, NO_LABEL_WHY)], (1,), ProbeAction.NONE),  # known to have no label
    ([], [item(1, NO_LABEL_WHY, ours=True)], (), ProbeAction.NONE),  # ours: its agent's
    ([], [item(1, NO_LABEL_WHY, blocked=True)], (), ProbeAction.NONE),
    ([], [item(1, "In the quiet period. Expires in 4.9 sec")], (), ProbeAction.NONE),
    (["cia-app-0123456789ab"], [item(1, NO_LABEL_WHY)], (), ProbeAction.NONE),
    ([PROBE], [item(1, NAMED)], (), ProbeAction.NONE),  # kept: it names the label
    ([PROBE], [item(1, NO_LABEL_WHY)], (), ProbeAction.DELETE),  # no label: no help
    ([PROBE], [], (), ProbeAction.DELETE),
    ([PROBE], [item(1, NAMED, ours=True)], (), ProbeAction.DELETE),
    ([PROBE, "cia-app-0123456789ab"], [item(1, NAMED)], (), ProbeAction.DELETE),
    ([PROBE, "hand-made"], [item(1, NO_LABEL_WHY)], (), ProbeAction.DELETE),
])
def test_when_the_probe_is_made_kept_or_deleted(nodes, queue, known, action):
    decision = decide(nodes=nodes, probe=PROBE, queue=queue, skip_parameter=OURS,
                      known_unlabelled=known)
    assert decision.action == action and decision.reason


@given(installation=st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,30}[A-Za-z0-9])?",
                                  fullmatch=True),
       job=st.from_regex(r"[a-z][a-z0-9/-]{0,20}", fullmatch=True))
def test_the_probe_is_never_taken_for_an_agent_and_names_its_installation(installation, job):
    name = probe_name(installation)
    assert not is_agent_name_of(name, job) and not is_own_agent_name(name, job, installation)
    assert name != probe_name("") and "/" not in name
    assert name != agent_name(job, "0" * 20, installation)


@pytest.mark.parametrize("queue", [[item(1, NAMED)], []], ids=["an item names a label", "none"])
def test_of_two_installations_probes_only_the_first_by_name_may_stay(queue):
    """Two installations sharing a Jenkins each made their probe (both saw "Waiting for next
    available executor" before either's was there). Each taking the other's for "another
    node" deleted both when their passes read the node list at the same time, and both were
    made again on the next pass (the item named no label again), and so on while the passes
    stay in step: each goes by the same rule, so the first probe by name stays (while an
    item names a label) and the other goes."""
    first, second = sorted([probe_name("prod/ci"), probe_name("staging/ci")])
    nodes = [first, second]
    kept = decide(nodes=nodes, probe=first, queue=queue, skip_parameter=OURS)
    assert kept.action == (ProbeAction.NONE if queue else ProbeAction.DELETE)
    gone = decide(nodes=nodes, probe=second, queue=queue, skip_parameter=OURS)
    assert gone.action == ProbeAction.DELETE and first in gone.reason
    # an agent there: each goes (that agent makes Jenkins name labels)
    agent = agent_name("app", "0" * 20, "prod/ci")
    assert {decide(nodes=[*nodes, agent], probe=p, queue=queue, skip_parameter=OURS).action
            for p in nodes} == {ProbeAction.DELETE}
    # the other's alone: not made (it makes Jenkins name labels), as before
    assert decide(nodes=[first], probe=second, queue=[item(1, NO_LABEL_WHY)],
                  skip_parameter=OURS).action == ProbeAction.NONE


def test_a_copy_of_one_of_our_builds_item_is_not_ours():
    """A Rebuild carries one of our build keys but is not that build's own item (`copies`):
    the probe is made for it, and kept while it names its label, as for any item not ours."""
    rebuild = item(1, NO_LABEL_WHY, ours=True)
    assert decide(nodes=[], probe=PROBE, queue=[rebuild], skip_parameter=OURS).action == \
        ProbeAction.NONE  # the build's own item: its agent is its provision's to make
    assert decide(nodes=[], probe=PROBE, queue=[rebuild], skip_parameter=OURS,
                  copies={1}).action == ProbeAction.CREATE
    named = item(1, NAMED, ours=True)
    assert decide(nodes=[PROBE], probe=PROBE, queue=[named], skip_parameter=OURS,
                  copies={1}).action == ProbeAction.NONE

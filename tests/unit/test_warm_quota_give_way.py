"""Giving way in a ResourceQuota (workers.core.warm_quota): the idle agents whose going lets the
namespace's quota admit the waiting builds, oldest first, and none for a build they cannot
help."""

from decimal import Decimal as D

from workers.core.cluster import Resources as R
from workers.core.quota_usage import Exceeded
from workers.core.warm_pool import IdleAgent
from workers.core.warm_quota import QuotaNeed, dump, give_way, load

AGENT = R(1000, 2**30)  # an idle agent's pod: 1 core, 1Gi


def idle(*names: str) -> list[IdleAgent]:
    return [IdleAgent(name, "a", AGENT, since) for since, name in enumerate(names)]


def cpu(asked: str, used: str, hard: str) -> QuotaNeed:
    return QuotaNeed((Exceeded("compute", "requests.cpu", D(asked), D(used), D(hard)),))


def test_the_oldest_agents_whose_requests_make_room_go():
    assert give_way(idle("old", "new"), [cpu("1", "2", "2.5")]) == ("old",)
    assert give_way(idle("old", "new"), [cpu("2", "2", "2")]) == ("old", "new")


def test_each_build_in_turn_takes_its_ask_of_the_room_made():
    assert give_way(idle("a", "b", "c"), [cpu("1", "3", "3"), cpu("1", "3", "3")]) == ("a", "b")


def test_agents_gone_already_make_room_without_a_second():
    assert give_way(idle("new"), [cpu("1", "2", "2.5")], gone=idle("old")) == ()


def test_a_build_no_agents_could_make_room_for_costs_none():
    assert give_way(idle("a", "b"), [cpu("4", "2", "3")]) == ()
    pause = QuotaNeed((Exceeded("pause", "pods", D(1), D(2), D(0)),))
    assert give_way(idle("a", "b"), [pause]) == ()
    limits = QuotaNeed((Exceeded("compute", "limits.cpu", D(1), D(2), D(2)),))
    assert give_way(idle("a"), [limits]) == ()  # an agent's limits are not known here


def test_a_pod_count_is_freed_by_one_agent():
    pods = QuotaNeed((Exceeded("count", "pods", D(1), D(5), D(5)),))
    assert give_way(idle("a", "b"), [pods]) == ("a",)


def test_the_record_round_trips_and_unreadable_text_is_no_need():
    exceeded = cpu("1.5", "2", "3").exceeded
    assert load(dump(exceeded)) == exceeded
    assert dump(None) is None and dump(()) is None
    assert load(None) == () and load("not json") == () and load('[["q", "r"]]') == ()

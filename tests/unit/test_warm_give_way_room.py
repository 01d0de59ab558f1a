"""The give-way decision (workers.core.warm_pool.give_way) with agents given up already whose
pods still hold their room: that room is the waiting builds', so a build an agent gave way to
costs no second agent, and room left over goes to the next build."""

from workers.core.cluster import Resources as R
from workers.core.warm_pool import IdleAgent, Need, give_way

AGENT = R(1000, 2**30)  # an idle agent's pod: 1 core, 1Gi
BUILD = R(1000, 768 * 2**20)  # a waiting build's min: fits in one agent's room
FULL = {"a": R(0, 0), "b": R(0, 0)}


def idle(*names: str, node: str = "a") -> list[IdleAgent]:
    return [IdleAgent(name, node, AGENT, since) for since, name in enumerate(names)]


def test_a_build_given_an_agents_room_already_costs_no_second_agent():
    assert give_way(idle("old", "new"), FULL, [Need(BUILD)]) == ("old",)
    assert give_way(idle("new"), FULL, [Need(BUILD)], given=idle("old")) == ()


def test_the_next_build_still_gets_an_agent_of_its_own():
    assert give_way(idle("new"), FULL, [Need(BUILD), Need(BUILD)], given=idle("old")) == ("new",)


def test_room_given_on_a_node_the_build_may_not_use_places_it_nowhere():
    on_b = idle("new", node="b")
    assert give_way(on_b, FULL, [Need(BUILD, frozenset({"b"}))], given=idle("old")) == ("new",)


def test_room_given_on_a_node_gone_counts_for_nothing():
    assert give_way(idle("new"), {"a": R(0, 0)}, [Need(BUILD)],
                    given=idle("old", node="gone")) == ("new",)


def test_two_small_rooms_given_on_one_node_add_up():
    half = [IdleAgent(f"half-{i}", "a", R(500, 2**29), i) for i in range(2)]
    assert give_way(idle("new"), FULL, [Need(BUILD)], given=half) == ()

"""The warm pool's pure rules (issue 22): its target from demand, and what to start or give up."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.core.warm_pool import (PoolPlan, WarmAgent, WarmState, arrival_rate, gap_rate,
                                    outgrown, plan, poisson_quantile, target_size)

IDLE, STARTING, CLAIMED = WarmState.IDLE, WarmState.STARTING, WarmState.CLAIMED


def test_poisson_quantiles_match_the_tables():
    # P(X<=1 | mean 0.35) = 0.951; P(X<=0) = 0.705
    assert poisson_quantile(0.35) == 1
    # mean 2: P(X<=4) = 0.947, P(X<=5) = 0.983
    assert poisson_quantile(2.0) == 5
    assert poisson_quantile(0.0) == 0
    assert poisson_quantile(10.0, 0.5) == 10
    assert poisson_quantile(5000.0) >= 5000  # no underflow at large means


@given(st.floats(min_value=0, max_value=200), st.floats(min_value=0, max_value=200))
def test_the_quantile_grows_with_the_mean(a, b):
    low, high = sorted((a, b))
    assert poisson_quantile(low) <= poisson_quantile(high)


def test_the_target_follows_arrivals_times_online_time_within_min_and_max():
    common = dict(minimum=0, maximum=5, idle_seconds=600, now=1000.0, last_arrival_at=990.0)
    # one build a minute, 20 s to come online: mean 0.33 in a start window -> its 95%
    # quantile, 1, and one more for the build that arrives
    assert target_size(arrivals_per_second=1 / 60, online_seconds=20, **common) == 2
    assert target_size(arrivals_per_second=1 / 60, online_seconds=20, cover_arrival=False,
                       **common) == 1
    # a build every 2 s: mean 10 -> capped at max
    assert target_size(arrivals_per_second=0.5, online_seconds=20, **common) == 5
    assert target_size(arrivals_per_second=0.0, online_seconds=20,
                       **{**common, "minimum": 2}) == 2
    assert target_size(arrivals_per_second=1.0, online_seconds=20,
                       **{**common, "maximum": 0}) == 0


def test_idle_past_idle_seconds_shrinks_to_min():
    common = dict(minimum=1, maximum=5, idle_seconds=600, arrivals_per_second=0.5,
                  online_seconds=20)
    assert target_size(now=1000.0, last_arrival_at=500.0, gap_cap=False, **common) == 5
    assert target_size(now=1200.0, last_arrival_at=500.0, **common) == 1
    assert target_size(now=1200.0, last_arrival_at=500.0, gap_cap=False, **common) == 1
    assert target_size(now=1200.0, last_arrival_at=None, **{**common, "minimum": 0}) == 0


def test_a_gap_the_rate_makes_rarer_than_the_quantiles_tail_caps_the_rate():
    # exp(-rate x gap) = 0.05 at rate = ln(20) / gap: about 3 / gap
    assert gap_rate(0.95, 100.0) == pytest.approx(math.log(20) / 100)
    assert gap_rate(0.95, 0.0) == math.inf  # an arrival just now caps nothing
    assert gap_rate(1.0, 100.0) == math.inf
    common = dict(minimum=0, maximum=10, idle_seconds=600, now=1000.0, online_seconds=20,
                  arrivals_per_second=0.05)  # mean 1 per start window: 4 agents
    assert target_size(last_arrival_at=1000.0, **common) == 4
    assert target_size(last_arrival_at=990.0, **common) == 4  # 10 s: usual at that rate
    # 100 s with none: at most 0.03/s, mean 0.6, P(X<=2) = 0.977: 2 and one more
    assert target_size(last_arrival_at=900.0, **common) == 3
    assert target_size(last_arrival_at=900.0, gap_cap=False, **common) == 4
    # 500 s: mean 0.12, P(X<=0) = 0.89 < 0.95 <= P(X<=1): 1 and one more; min still holds
    assert target_size(last_arrival_at=500.0, **common) == 2
    assert target_size(last_arrival_at=500.0, **{**common, "minimum": 3}) == 3
    assert target_size(last_arrival_at=500.0, **{**common, "now": 1200.0}) == 0  # idle


@given(st.floats(0, 2), st.floats(0, 590), st.floats(0, 590))
def test_the_target_never_grows_while_the_gap_grows(rate, gap, more):
    common = dict(minimum=0, maximum=20, idle_seconds=600, now=1000.0, online_seconds=20,
                  arrivals_per_second=rate)
    short, long = sorted((gap, more))
    assert target_size(last_arrival_at=1000.0 - long, **common) <= \
        target_size(last_arrival_at=1000.0 - short, **common) <= \
        target_size(last_arrival_at=1000.0 - short, gap_cap=False, **common)


def test_plan_starts_what_is_missing_and_counts_starting_agents():
    agents = [WarmAgent("w1", IDLE, 1.0), WarmAgent("w2", STARTING, 2.0),
              WarmAgent("w3", CLAIMED, 3.0)]
    assert plan(agents, 4, builds_waiting=0) == PoolPlan(2, ())
    assert plan(agents, 2, builds_waiting=0) == PoolPlan(0, ())


def test_plan_retires_only_idle_agents_oldest_first():
    agents = [WarmAgent("new", IDLE, 50.0), WarmAgent("old", IDLE, 10.0),
              WarmAgent("s", STARTING, 5.0), WarmAgent("c", CLAIMED, 1.0)]
    assert plan(agents, 1, builds_waiting=0) == PoolPlan(0, ("old", "new"))
    assert plan(agents, 2, builds_waiting=0) == PoolPlan(0, ("old",))
    assert plan(agents, 0, builds_waiting=0).retire == ("old", "new")  # "s" left to start


def test_builds_always_win_idle_agents_give_way_and_none_start():
    agents = [WarmAgent("a", IDLE, 3.0), WarmAgent("b", IDLE, 1.0),
              WarmAgent("c", CLAIMED, 0.0)]
    assert plan(agents, 5, builds_waiting=1) == PoolPlan(0, ("b",))
    assert plan(agents, 5, builds_waiting=9) == PoolPlan(0, ("b", "a"))


@given(st.lists(st.tuples(st.sampled_from(list(WarmState)), st.floats(0, 1e6)), max_size=30),
       st.integers(0, 40), st.integers(0, 5))
def test_a_plan_never_retires_a_claimed_or_starting_agent(states, target, waiting):
    agents = [WarmAgent(f"w{i}", s, t) for i, (s, t) in enumerate(states)]
    result = plan(agents, target, builds_waiting=waiting)
    by_name = {a.name: a for a in agents}
    assert all(by_name[n].state == IDLE for n in result.retire)
    assert len(set(result.retire)) == len(result.retire)
    if waiting:
        assert result.start == 0
    else:
        live = sum(1 for a in agents if a.state != CLAIMED)
        assert live + result.start - len(result.retire) >= min(target, live + result.start)


def test_arrival_rate_counts_the_window_only():
    assert math.isclose(arrival_rate([1.0, 50.0, 70.0, 99.0], now=100.0, window_seconds=60.0),
                        3 / 60)
    assert arrival_rate([], now=100.0, window_seconds=60.0) == 0.0


def _template(**warm):
    from workers.core.models import PodTemplate
    return PodTemplate.model_validate({"cpu": {"min": "500m", "default": "1", "max": "2"},
                                       "memory": {"min": "512Mi", "default": "1Gi",
                                                  "max": "4Gi"},
                                       **({"warm": warm} if warm else {})})


def test_a_warm_agent_is_pinned_at_the_templates_default_size():
    from workers.core.cluster import Resources
    from workers.core.warm_pool import default_size, pinned

    template = pinned(_template(max=2))
    assert (template.cpu.min, template.cpu.default, template.cpu.max) == (1000,) * 3
    assert (template.memory.min, template.memory.max) == (2**30, 2**30)
    assert default_size(_template()) == Resources(1000, 2**30)


def test_only_the_room_below_min_is_missing_and_claimed_agents_do_not_count():
    from workers.core.warm_pool import missing_below_min

    agents = [WarmAgent("a", STARTING, 0), WarmAgent("b", CLAIMED, 0)]
    assert missing_below_min(_template(min=3, max=5), agents) == 2
    assert missing_below_min(_template(min=0, max=5), agents) == 0
    assert missing_below_min(_template(min=1, max=5), agents) == 0
    assert missing_below_min(_template(), agents) == 0  # no pool


def test_room_below_min_counts_no_agent_beyond_what_builds_could_take_at_once():
    """A pool whose `min` is above its template's maxConcurrent, or above maxAgents: the
    agents beyond the cap could never all be taken (each build takes its slot first), and
    their room counted in nodes_needed asked for nodes no build would use."""
    from workers.core.models import PodTemplate
    from workers.core.warm_pool import missing_below_min

    capped = PodTemplate.model_validate(
        _template(min=3, max=5).model_dump(by_alias=True) | {"maxConcurrent": 1})
    assert missing_below_min(capped, []) == 1
    assert missing_below_min(_template(min=3, max=5), [], max_agents=2) == 2
    assert missing_below_min(_template(min=3, max=5), [], max_agents=10) == 3


def test_agents_give_way_only_where_that_makes_a_waiting_build_fit():
    from workers.core.cluster import Resources as R
    from workers.core.warm_pool import IdleAgent, Need, give_way

    one = R(1000, 2**30)
    idle = [IdleAgent("a-new", "a", one, 30), IdleAgent("a-old", "a", one, 10),
            IdleAgent("b-old", "b", one, 5)]
    free = {"a": R(500, 2**30), "b": R(0, 0), "c": R(1000, 4 * 2**30)}
    # fits on c already: nothing given up
    assert give_way(idle, free, [Need(one)]) == ()
    # the second needs room: the oldest idle agent (on b) makes it fit
    assert give_way(idle, free, [Need(one), Need(one)]) == ("b-old",)
    # 1.5 cores: b's one agent gives 1 core, not enough; a's oldest plus its free 0.5 does
    assert give_way(idle, {"a": R(500, 2**30), "b": R(0, 0)}, [Need(R(1500, 2**30))]) == ("a-old",)
    # two cores on a: both of a's agents, oldest first
    assert give_way(idle, {"a": R(0, 0), "b": R(0, 0)}, [Need(R(2000, 2**30))]) \
        == ("a-old", "a-new")
    # bigger than any node could hold: no agent is given up for it
    assert give_way(idle, {"a": R(0, 0), "b": R(0, 0)}, [Need(R(8000, 2**30))]) == ()
    assert give_way([], free, [Need(one)] * 3) == ()


def test_a_build_held_to_some_nodes_counts_room_and_agents_on_those_nodes_only():
    """Several node pools: a build whose template selects the `edge` pool (node b) waits
    while the general pool (a) has room; room on a places it nowhere, so b's idle agent goes.
    An agent on a node the build may not use is never given up for it."""
    from workers.core.cluster import Resources as R
    from workers.core.warm_pool import IdleAgent, Need, give_way

    one = R(1000, 2**30)
    free = {"a": R(8000, 8 * 2**30), "b": R(0, 0)}
    on_b = [IdleAgent("b-old", "b", one, 5)]
    assert give_way(on_b, free, [Need(one, frozenset({"b"}))]) == ("b-old",)
    assert give_way(on_b, free, [Need(one)]) == ()  # any node: it fits on a already
    on_a = [IdleAgent("a-old", "a", one, 5)]
    assert give_way(on_a, {"a": R(0, 0), "b": R(0, 0)}, [Need(one, frozenset({"b"}))]) == ()


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 4)), max_size=8),
       st.lists(st.integers(1, 6), max_size=5))
def test_giving_way_never_gives_up_an_agent_twice_nor_more_than_it_needs(agents, needs):
    from workers.core.cluster import Resources as R
    from workers.core.warm_pool import IdleAgent, Need, give_way

    idle = [IdleAgent(f"w{i}", node, R(cores * 1000, 0), i)
            for i, (node, cores) in enumerate(agents)]
    given_up = give_way(idle, {"a": R(0, 0), "b": R(0, 0), "c": R(0, 0)},
                        [Need(R(n * 1000, 0)) for n in needs])
    assert len(set(given_up)) == len(given_up)
    held = sum(a.size.cpu_millis for a in idle if a.name in given_up)
    assert held <= sum(needs) * 1000 + max((c for _, c in agents), default=0) * 1000 * len(needs)


def test_covering_the_arrival_is_the_default_one_more_so_a_build_finds_an_agent_at_the_quantile():
    common = dict(minimum=0, maximum=10, idle_seconds=600, now=1000.0, last_arrival_at=990.0,
                  online_seconds=20)
    # mean 1 per start window: P(X<=2) = 0.920 < 0.95 <= P(X<=3) = 0.981
    assert target_size(arrivals_per_second=0.05, cover_arrival=False, **common) == 3
    assert target_size(arrivals_per_second=0.05, **common) == 4  # the default
    # a build finds an agent when fewer than the target arrived before it in the window
    hit = sum(math.exp(-1.0) / math.factorial(k) for k in range(4))
    assert hit >= 0.95
    # still within max, and back to min once idle
    assert target_size(arrivals_per_second=5.0, cover_arrival=True, **common) == 10
    assert target_size(arrivals_per_second=0.05, cover_arrival=True,
                       **{**common, "now": 2000.0}) == 0


def test_an_idle_agent_is_outgrown_only_below_every_want_and_below_the_size_made_now():
    idle = [("a", 768), ("b", 1024)]
    assert outgrown(idle, [1024, 2048], made_at=2048) == ("a",)
    assert outgrown(idle, [512, 2048], made_at=2048) == ()  # a build of the window fit "a"
    assert outgrown(idle, [], made_at=2048) == ()  # no build came: nothing to judge by
    # the biggest node holds 768 only: made again, it would be just as it is
    assert outgrown(idle, [1024], made_at=768) == ()
    # nor when the pool makes them smaller than every build wants: made again at 900 (the
    # node's room grew by another workload's pod ending), "a" would be taken by none either
    assert outgrown(idle, [1024], made_at=900) == ()
    assert outgrown(idle, [1024, 2048], made_at=1024) == ("a",)

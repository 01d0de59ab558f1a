"""The give-way decision (workers.core.warm_pool.give_way) for what an idle warm agent's pod
holds beside cpu and memory (core.give_way_fit): the GPU, host port or anti-affinity token a
waiting build lacks is given up with the agent holding it; an agent whose going would not
place the build stays."""

from workers.core.cluster import NodeState, Resources as R
from workers.core.fit import Held, Limits, Needs
from workers.core.give_way_fit import gives_room
from workers.core.warm_pool import IdleAgent, Need, give_way

GPU = "nvidia.com/gpu"
AGENT, BUILD = R(1000, 2**30), R(1000, 2**30)
ROOMY = {"a": R(8000, 16 * 2**30)}
TOKEN = frozenset({("podAntiAffinity-abc", "", 0)})
PORT = frozenset({("TCP", "", 9100)})


def node(extended=(), held=Held()) -> dict[str, NodeState]:
    return {"a": NodeState("a", R(8000, 32 * 2**30), limits=Limits(extended=extended),
                           held=held)}


def agent(name: str, held: Held, since: float = 0.0) -> IdleAgent:
    return IdleAgent(name, "a", AGENT, since, held)


def test_every_reason_a_pod_leaving_may_answer_gives_room():
    for reason in ("insufficient_cpu", "insufficient_memory", f"insufficient_{GPU}",
                   "insufficient_pods", "host_ports", "pod_anti_affinity"):
        assert gives_room(reason), reason
    for reason in ("cap", "quota", "paused", "no_matching_node", "unschedulable", "contention"):
        assert not gives_room(reason), reason


def test_the_agent_holding_the_anti_affinity_token_gives_way():
    holder = Held(1, host_ports=TOKEN)
    assert give_way([agent("w", holder)], ROOMY, [Need(BUILD, needs=Needs(host_ports=TOKEN))],
                    nodes=node(held=holder)) == ("w",)


def test_the_agent_holding_the_host_port_gives_way():
    holder = Held(1, host_ports=PORT)
    assert give_way([agent("w", holder)], ROOMY, [Need(BUILD, needs=Needs(host_ports=PORT))],
                    nodes=node(held=holder)) == ("w",)


def test_an_agent_whose_going_frees_memory_but_no_gpu_stays():
    other = Held(1, extended=((GPU, 1),))  # another team's pod holds the node's GPU
    assert give_way([agent("w", Held(1))], {"a": R(0, 0)},
                    [Need(BUILD, needs=Needs(extended=((GPU, 1),)))],
                    nodes=node(extended=((GPU, 1),), held=other + Held(1))) == ()


def test_a_build_the_token_free_node_takes_costs_no_agent():
    holder = Held(1, host_ports=TOKEN)
    assert give_way([agent("w", holder)], ROOMY, [Need(BUILD, needs=Needs(host_ports=TOKEN))],
                    nodes=node(held=Held())) == ()


def test_the_room_given_for_a_token_counts_for_one_build_only():
    holder = Held(1, host_ports=TOKEN)
    needs = [Need(BUILD, needs=Needs(host_ports=TOKEN))] * 2
    assert give_way([agent("w", holder)], ROOMY, needs, nodes=node(held=holder)) == ("w",)
    assert give_way([], ROOMY, needs[:1], given=[agent("w", holder)],
                    nodes=node(held=holder)) == ()


def test_an_older_agent_whose_going_adds_nothing_the_build_lacks_stays():
    """The node has cpu and memory for the build; only the younger agent's GPU is lacking.
    Given up oldest first until the build fit, the older CPU agent went too, for nothing."""
    gpu = Held(1, extended=((GPU, 1),))
    agents = [agent("plain", Held(1), since=0.0), agent("gpu", gpu, since=1.0)]
    assert give_way(agents, ROOMY, [Need(BUILD, needs=Needs(extended=((GPU, 1),)))],
                    nodes=node(extended=((GPU, 1),), held=gpu + Held(1))) == ("gpu",)

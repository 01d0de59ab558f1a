"""Differential property tests: the fast path (PlacementIndex, plan_on_index) against the
reference (placement.decide, capacity.plan) on random clusters. Same input, same Placement or
Wait (node, size, in-flight amount and reason text), same plan."""

import dataclasses
import functools

from hypothesis import given, settings, strategies as st

from tests.unit.test_placement_properties import (
    ANTI_TOKEN, GI, GPU, PORTS, ZONES, node_labels, taint_sets, templates)
from workers.core.capacity import (
    WaitingBuild, capacity_state, capacity_state_on_index, plan, plan_on_index)
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.fit import Held, Limits
from workers.core.models import CpuRange, MemoryRange, PodTemplate
from workers.core.placement import Placement, alternates, decide, free
from workers.core.placement_index import PlacementIndex, node_row

SHAPES = [Resources(2000, 4 * GI), Resources(4000, 16 * GI), Resources(8000, 32 * GI),
          Resources(16000, 32 * GI), Resources(0, 8 * GI)]


# Strategies are built once (constants, or cached per argument) and only drawn from in the
# composites: hypothesis validates each strategy object it is handed, and building them afresh
# for every node of every example was most of this module's time (cProfile: ~75% in strategy
# validation and data generation, not in the index or decide). The distributions are unchanged.
ROUND_CPU_LEFT = st.sampled_from([0, 250, 500, 1000, 2000])
ROUND_MEM_LEFT = st.sampled_from([0, GI // 2, GI, 2 * GI])
QUARTER = st.integers(0, 3)


@functools.cache
def _amount(limit: int, step: int):
    return st.sampled_from([0, step, 2 * step, limit // 2, limit]) | st.integers(0, max(0, limit))


@functools.cache
def loads(alloc: Resources, busy: bool | None = None):
    """requested, usage, in_flight: from a few round values (many ties) or anything; a busy
    node has little left (the state in which builds shrink or wait)."""
    c, m = max(alloc.cpu_millis, 1000), alloc.memory_bytes
    cpu_amount, mem_amount = _amount(c, 500), _amount(m, GI)
    usages = st.none() | st.builds(Resources, st.integers(0, c), st.integers(0, m))
    in_flights = st.just(Resources()) | st.builds(Resources, st.integers(0, c // 2),
                                                  st.integers(0, m // 2))

    @st.composite
    def _loads(draw):
        is_busy = draw(QUARTER) == 0 if busy is None else busy
        if is_busy:
            requested = Resources(max(0, c - draw(ROUND_CPU_LEFT)),
                                  max(0, m - draw(ROUND_MEM_LEFT)))
        else:
            requested = Resources(draw(cpu_amount), draw(mem_amount))
        return requested, draw(usages), draw(in_flights)
    return _loads()


POD_LIMITS = st.sampled_from([None, 1, 2, 3, 110])
EPHEMERAL_LIMITS = st.sampled_from([None, 10 * GI, 100 * GI])
EXTENDED_LIMITS = st.sampled_from([(), ((GPU, 1),), ((GPU, 4),)])


@st.composite
def _limits(draw):
    """What a node allows beside cpu and memory: often nothing said, else a small pod limit,
    some ephemeral-storage, maybe GPUs."""
    if draw(st.booleans()):
        return Limits()
    return Limits(pods=draw(POD_LIMITS), ephemeral_bytes=draw(EPHEMERAL_LIMITS),
                  extended=draw(EXTENDED_LIMITS))


LIMITS = _limits()


def limits():
    return LIMITS


HELD_EPHEMERAL = st.sampled_from([0, 5 * GI, 10 * GI, 95 * GI])
HELD_PORTS = st.lists(st.sampled_from(PORTS + (ANTI_TOKEN,)), max_size=2)


@functools.cache
def helds(limit: Limits):
    """What a node's pods hold beside cpu and memory, up to (and at) its limits."""
    gpus = dict(limit.extended).get(GPU, 0)
    used_gpus = st.integers(0, gpus) if gpus else st.just(0)
    pods = st.integers(0, (limit.pods or 5) + 1)

    @st.composite
    def _helds(draw):
        used = draw(used_gpus)
        return Held(pods=draw(pods), ephemeral_bytes=draw(HELD_EPHEMERAL),
                    extended=((GPU, used),) if used else (),
                    host_ports=frozenset(draw(HELD_PORTS)))
    return _helds()


NODE_SHAPES = st.sampled_from(SHAPES)
IN_FLIGHT_PODS = st.sampled_from([0, 0, 1])


@st.composite
def _a_node(draw, index: int, busy: bool | None):
    alloc = draw(NODE_SHAPES)
    requested, usage, in_flight = draw(loads(alloc, busy))
    limit = draw(limits())
    return NodeState(name=f"node-{index:03d}", allocatable=alloc, requested=requested,
                     usage=usage, in_flight=in_flight, limits=limit, held=draw(helds(limit)),
                     in_flight_pods=draw(IN_FLIGHT_PODS),
                     labels=draw(node_labels(index)), taints=draw(taint_sets()),
                     unschedulable=draw(st.booleans()) and draw(st.booleans()),
                     ready=draw(st.booleans()) or draw(st.booleans()))


@functools.cache
def a_node(index: int, busy: bool | None = None):
    return _a_node(index, busy)


@functools.cache
def upto(n: int):
    """st.integers(0, n), built once per n."""
    return st.integers(0, n)


BUSY = st.sampled_from([None, None, True])


@st.composite
def clusters(draw, max_nodes: int = 30):
    """Up to 30 nodes, some of them copies of others but for the name (exact ties)."""
    count = draw(upto(max_nodes))
    busy = draw(BUSY)  # a third of the clusters are full
    out: list[NodeState] = []
    for i in range(count):
        if out and draw(QUARTER) == 0:
            twin = out[draw(upto(len(out) - 1))]
            out.append(dataclasses.replace(twin, name=f"node-{i:03d}",
                                           labels={**twin.labels,
                                                   "kubernetes.io/hostname": f"host-{i:03d}"}))
        else:
            out.append(draw(a_node(i, busy)))
    return out


@st.composite
def changes(draw, cluster: list[NodeState]):
    """A few nodes replaced for one decision, as observe() does: other requests, agents in
    flight (and now and then another state altogether)."""
    if not cluster:
        return {}
    picked = draw(st.lists(st.sampled_from(cluster), max_size=4, unique_by=lambda n: n.name))
    out = {}
    for node in picked:
        requested, usage, in_flight = draw(loads(node.allocatable))
        new = dataclasses.replace(node, requested=requested, in_flight=in_flight,
                                  usage=[node.usage, usage][draw(upto(1))],
                                  in_flight_pods=draw(upto(2)),
                                  held=[node.held, draw(helds(node.limits))][draw(upto(1))])
        if draw(upto(5)) == 0:
            new = dataclasses.replace(new, unschedulable=not new.unschedulable)
        out[node.name] = new
    return out


def exclusions(data, cluster: list[NodeState]) -> frozenset[str]:
    """Nodes a build may not use (its agent did not connect there): none most of the time,
    else a few of the cluster's, now and then a name the cluster does not have."""
    names = [n.name for n in cluster] + ["node-gone"]
    return frozenset(data.draw(st.just([]) | st.lists(st.sampled_from(names), max_size=4)))


expected_uses = st.none() | st.builds(Resources, st.integers(0, 12000),
                                      st.integers(0, 24 * GI))
targets = st.sampled_from([0.8, 0.5, 1.0])


def reference_nodes(cluster, changed):
    return [changed.get(n.name, n) for n in cluster]


@settings(max_examples=120, deadline=None)
@given(st.data(), clusters(), templates(extras_too=True), st.integers(0, 30), expected_uses,
       targets)
def test_the_index_decides_exactly_as_decide(data, cluster, template, ahead, use, target):
    changed = data.draw(changes(cluster))
    exclude = exclusions(data, cluster)
    index = PlacementIndex(target)
    index.replace_all(cluster)
    fast = index.decide(template, changed=changed, waiting_ahead=ahead, expected_use=use,
                        exclude_nodes=exclude)
    nodes = reference_nodes(cluster, changed)
    assert fast == decide(template, nodes, waiting_ahead=ahead, target_utilisation=target,
                          expected_use=use, exclude_nodes=exclude)
    if exclude and isinstance(fast, Placement):
        assert fast.node not in exclude
    if isinstance(fast, Placement):  # the pod's other candidates, too
        k = data.draw(st.integers(0, 4))
        more = index.alternates(template, fast, k, changed=changed, exclude_nodes=exclude)
        assert more == alternates(template, nodes, fast, k, target_utilisation=target,
                                  exclude_nodes=exclude)
        assert len(more.others) <= k and fast.node not in dict(more.others)
        assert not exclude & set(dict(more.others))
    # what /metrics shows of each node, too
    assert sorted(index.rows(changed)) == sorted(node_row(n, free(n, target)) for n in nodes)


OPERATION_KINDS = st.sampled_from(["load", "loads", "put", "reput", "remove", "add", "held"])


@st.composite
def operations(draw, cluster: list[NodeState]):
    """Changes after the index was built: nodes re-put (new load, or cordoned, relabelled,
    resized), removed, added, and loads set one by one or many at once."""
    ops = []
    names = [n.name for n in cluster]
    nodes_by_name = {n.name: n for n in cluster}
    for i in range(draw(upto(12))):
        kind = draw(OPERATION_KINDS)
        if kind == "reput" and names:  # the same node again, another load: labels unchanged
            node = nodes_by_name[draw(st.sampled_from(names))]
            requested, usage, in_flight = draw(loads(node.allocatable))
            node = dataclasses.replace(node, requested=requested, usage=usage,
                                       in_flight=in_flight)
            nodes_by_name[node.name] = node
            ops.append(("put", node))
        elif kind == "add" or not names:
            node = draw(a_node(500 + i))
            names.append(node.name)
            nodes_by_name[node.name] = node
            ops.append(("put", node))
        elif kind == "remove":
            ops.append(("remove", names.pop(draw(st.integers(0, len(names) - 1)))))
        elif kind == "held":
            name = draw(st.sampled_from(names))
            ops.append(("held", [(name, draw(helds(nodes_by_name[name].limits)))]))
        elif kind == "put":
            node = dataclasses.replace(draw(a_node(0)), name=draw(st.sampled_from(names)))
            nodes_by_name[node.name] = node
            ops.append(("put", node))
        else:
            chosen = draw(st.lists(st.sampled_from(names), min_size=1,
                                   max_size=1 if kind == "load" else len(names)))
            ops.append(("loads", [(name, *draw(loads(draw(NODE_SHAPES))))
                                  for name in chosen]))
    return ops


def apply(nodes: dict[str, NodeState], op) -> None:
    kind, arg = op
    if kind == "put":
        nodes[arg.name] = arg
    elif kind == "remove":
        nodes.pop(arg, None)
    elif kind == "held":
        for name, held in arg:
            if name in nodes:
                nodes[name] = dataclasses.replace(nodes[name], held=held)
    else:
        for name, requested, usage, in_flight in arg:
            if name in nodes:
                nodes[name] = dataclasses.replace(nodes[name], requested=requested, usage=usage,
                                                  in_flight=in_flight)


@settings(max_examples=80, deadline=None)
@given(st.data(), clusters(), st.lists(templates(extras_too=True), min_size=1, max_size=3),
       st.integers(0, 10), expected_uses, targets)
def test_the_index_kept_current_change_by_change_still_decides_as_decide(
        data, cluster, tpls, ahead, use, target):
    index = PlacementIndex(target)
    for node in cluster:  # one by one, not replace_all
        index.put(node)
    for template in tpls:  # every template's index exists before the changes
        index.decide(template)
    nodes = {n.name: n for n in cluster}
    for op in data.draw(operations(cluster)):
        apply(nodes, op)
        kind, arg = op
        if kind == "put":
            index.put(arg)
        elif kind == "remove":
            index.remove(arg)
        elif kind == "held":
            index.set_held(arg)
        else:
            index.set_loads(arg)
    current = sorted(nodes.values(), key=lambda n: n.name)
    changed = data.draw(changes(current))
    exclude = exclusions(data, current)
    for template in tpls:
        assert index.decide(template, changed=changed, waiting_ahead=ahead,
                            expected_use=use, exclude_nodes=exclude) == \
            decide(template, reference_nodes(current, changed), waiting_ahead=ahead,
                   target_utilisation=target, expected_use=use, exclude_nodes=exclude)
    assert len(index) == len(current)
    assert index.reference_shape() == (max(
        {n.allocatable for n in current},
        key=lambda s: (sum(n.allocatable == s for n in current), s)) if current else None)


@settings(max_examples=40, deadline=None)
@given(clusters(max_nodes=12), templates())
def test_another_target_utilisation_recomputes_every_node(cluster, template):
    index = PlacementIndex(0.8)
    index.replace_all(cluster)
    index.decide(template)
    assert index.decide(template, target_utilisation=0.5) == \
        decide(template, cluster, target_utilisation=0.5)


WAIT_TEMPLATES = [
    PodTemplate(),
    PodTemplate(node_selector={"zone": "a"}),
    PodTemplate(cpu=CpuRange(min="2", default="2", max="4"),
                memory=MemoryRange(min="4Gi", default="4Gi", max="8Gi"),
                tolerations=({"key": "gpu", "operator": "Exists"},)),
    # asking what kube-scheduler counts beside cpu and memory: planned only where it is left
    PodTemplate(resources={GPU: 1}, tolerations=({"key": "gpu", "operator": "Exists"},)),
    PodTemplate(ephemeral_storage=10 * GI),
]


ANY_SIZE = st.builds(Resources, st.integers(1, 9000), st.integers(1, 40 * GI))
WAIT_TEMPLATE = st.sampled_from([  # each with its sizes' strategy, built once
    (t, st.sampled_from([Resources(t.cpu.min, t.memory.min), Resources(500, GI),
                         Resources(1000, 2 * GI)]) | ANY_SIZE) for t in WAIT_TEMPLATES])


@st.composite
def waiting(draw):
    out = []
    for i in range(draw(upto(30))):
        template, sizes = draw(WAIT_TEMPLATE)
        size = draw(sizes)
        out.append(WaitingBuild(f"b{i:02d}", template, size))
    return out


@settings(max_examples=80, deadline=None)
@given(st.data(), clusters(), waiting(),
       st.none() | st.sampled_from([Resources(8000, 32 * GI), Resources(2000, 4 * GI)]),
       targets, st.none() | st.builds(
           Limits, pods=st.none() | st.integers(1, 6),
           ephemeral_bytes=st.none() | st.sampled_from([15 * GI, 40 * GI]),
           extended=st.sampled_from([(), ((GPU, 1),), ((GPU, 2),)])))
def test_plan_on_the_index_is_the_first_fit_decreasing_plan(data, cluster, builds, reference,
                                                            target, limits):
    changed = data.draw(changes(cluster))
    index = PlacementIndex(target)
    index.replace_all(cluster)
    nodes = reference_nodes(cluster, changed)
    assert capacity_state_on_index(builds, index, reference, changed=changed,
                                   fresh_limits=limits) == \
        capacity_state(builds, nodes, reference, target_utilisation=target,
                       fresh_limits=limits)
    shape = reference or Resources(8000, 32 * GI)
    assert plan_on_index(builds, index, shape, changed=changed, fresh_limits=limits) == \
        plan(builds, nodes, shape, target_utilisation=target, fresh_limits=limits)


class CountingList(list):
    """A list that counts the items read by index (the walks read a node's free this way)."""

    reads = 0

    def __getitem__(self, i):
        CountingList.reads += 1
        return super().__getitem__(i)


def test_a_big_cluster_decides_as_decide_and_examines_few_nodes():
    """Many nodes of a few shapes, busy to every degree: the answers equal the reference, and
    the walk for the lowest utilisation reads the free capacity of a few nodes only."""
    import random
    rng = random.Random(7)
    shapes = [Resources(4000, 16 * GI), Resources(8000, 32 * GI), Resources(16000, 64 * GI)]
    cluster = []
    for i in range(3000):
        alloc = rng.choice(shapes)
        cluster.append(NodeState(
            f"n{i:05d}", alloc,
            requested=Resources(rng.randrange(alloc.cpu_millis),
                                rng.randrange(alloc.memory_bytes)),
            usage=Resources(rng.randrange(alloc.cpu_millis), rng.randrange(alloc.memory_bytes)),
            labels={"zone": rng.choice(ZONES)}))
    index = PlacementIndex()
    index.replace_all(cluster)
    template = PodTemplate(node_selector={"zone": "a"})
    index.decide(template)
    index._fc, index._fm = CountingList(index._fc), CountingList(index._fm)
    for ahead in (0, 5, 50):
        for use in (None, Resources(3000, GI)):
            CountingList.reads = 0
            fast = index.decide(template, waiting_ahead=ahead, expected_use=use)
            assert isinstance(fast, Placement)
            assert CountingList.reads < 150, CountingList.reads  # of ~1,500 eligible nodes
            assert fast == decide(template, cluster, waiting_ahead=ahead, expected_use=use)


def test_an_excluded_node_is_not_used_even_when_it_is_the_best_and_both_paths_say_why():
    """Its agent did not connect on node-a: the build goes to node-b although node-a is
    emptier; with node-b cordoned it waits, saying a node was excluded."""
    a = NodeState("node-a", Resources(8000, 32 * GI))
    b = NodeState("node-b", Resources(8000, 32 * GI), requested=Resources(4000, 8 * GI))
    template = PodTemplate()
    index = PlacementIndex()
    index.replace_all([a, b])
    exclude = frozenset({"node-a"})
    assert index.decide(template).node == "node-a"
    assert index.decide(template, exclude_nodes=exclude).node == "node-b" == \
        decide(template, [a, b], exclude_nodes=exclude).node
    cordoned = dataclasses.replace(b, unschedulable=True)
    wait = index.decide(template, changed={"node-b": cordoned}, exclude_nodes=exclude)
    assert wait == decide(template, [a, cordoned], exclude_nodes=exclude)
    assert wait.detail == ("none of 2 nodes is Ready, uncordoned, matching and tolerated "
                           "(1 excluded for this build)")


def test_gpu_builds_are_planned_only_where_a_gpu_is_left_on_both_paths():
    """node-g's one GPU is free for one of the two GPU builds waiting, not both, though its
    cpu and memory hold both; node-p has no GPU: one node more is needed (first-fit put
    both on node-g, and nodes_needed said 0 while one waited for a GPU)."""
    g = NodeState("node-g", Resources(8000, 32 * GI), limits=Limits(extended=((GPU, 1),)))
    p = NodeState("node-p", Resources(16000, 64 * GI))
    template = PodTemplate(resources={GPU: 1})
    builds = [WaitingBuild(f"b{i}", template, Resources(1000, GI)) for i in range(2)]
    index = PlacementIndex()
    index.replace_all([g, p])
    shape = Resources(8000, 32 * GI)
    on_index, first_fit = plan_on_index(builds, index, shape), plan(builds, [g, p], shape)
    assert on_index == first_fit
    assert first_fit.nodes_needed == 1
    assert sorted(first_fit.assignment.values()) == ["new-0", "node-g"]
    # its GPU taken by a pod (the index's held, as ClusterWatch sets it): neither goes there
    # (a fresh node is assumed to have what the template asks, as it matches every template)
    taken = Held(pods=1, extended=((GPU, 1),))
    index.set_held([("node-g", taken)])
    assert plan_on_index(builds, index, shape) == \
        plan(builds, [dataclasses.replace(g, held=taken), p], shape)
    assert set(plan(builds, [dataclasses.replace(g, held=taken), p], shape)
               .assignment.values()) == {"new-0"}


def test_the_reference_shape_is_of_the_nodes_the_waiting_builds_may_use():
    """Five GPU nodes tainted for GPU work and three cordoned nodes being retired outnumber
    the CI pool's two: counted over every node, the reference shape was the GPU node's
    (32 cores), and nodes_needed said 1 for four 2-core builds the CI pool (4 cores a node)
    needs 2 more nodes for. Hand-computed: 4 x 2000m on fresh 4000m nodes = 2."""
    ci = [NodeState(f"ci-{i}", Resources(4000, 16 * GI), requested=Resources(4000, 2 * GI))
          for i in range(2)]
    gpu = [NodeState(f"gpu-{i}", Resources(32000, 128 * GI),
                     taints=(Taint("nvidia.com/gpu", "NoSchedule", "present"),),
                     limits=Limits(extended=((GPU, 4),))) for i in range(5)]
    old = [NodeState(f"old-{i}", Resources(16000, 64 * GI), unschedulable=True)
           for i in range(3)]
    nodes = ci + gpu + old
    builds = [WaitingBuild(f"b{i}", PodTemplate(), Resources(2000, 4 * GI)) for i in range(4)]
    index = PlacementIndex()
    index.replace_all(nodes)
    for state in (capacity_state(builds, nodes), capacity_state_on_index(builds, index)):
        assert state.reference == Resources(4000, 16 * GI)
        assert state.nodes_needed == 2
    # a GPU build waiting alone: the GPU nodes are its shape
    gpu_build = [WaitingBuild("g", PodTemplate(resources={GPU: 1}, tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists"}]), Resources(1000, GI))]
    assert capacity_state(gpu_build, nodes).reference == Resources(32000, 128 * GI)
    assert capacity_state_on_index(gpu_build, index).reference == Resources(32000, 128 * GI)

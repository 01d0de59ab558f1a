"""Property tests of the pure core: sizing, placement and nodes-needed on random clusters.

The strategies are built once (module constants, or cached per argument) and only drawn from
inside the composites: hypothesis validates every strategy object it is handed, and building
`st.integers(...) | ...` afresh for each node of each example was most of this module's time
(cProfile: ~80% in strategy validation and data generation, not in the code under test).
The distributions are exactly what they were."""

import functools

from hypothesis import given, settings, strategies as st

from workers.core import node_affinity
from workers.core.capacity import WaitingBuild, capacity_state, plan, reference_shape, shortfall
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.fit import Limits, lacks, needs
from workers.core.models import CpuRange, MemoryRange, PodTemplate, Toleration
from workers.core.placement import Placement, Wait, avoided, decide, free, why_not
from workers.core.pod_anti_affinity import tokens

GI = 2**30
ZONES = ("a", "b")
TAINT_KEYS = ("dedicated", "gpu")
GPU = "nvidia.com/gpu"
PORTS = (("TCP", "", 8080), ("TCP", "10.0.0.1", 8080), ("UDP", "", 53))
HEAVY = {"ci-autoscaler.io/template": "heavy"}
ANTI = {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
    {"labelSelector": {"matchLabels": HEAVY}, "topologyKey": "kubernetes.io/hostname"}]}}}
[ANTI_TOKEN] = tokens(ANTI, HEAVY)  # what a node running such a pod holds


@functools.cache
def resources(cpu_max=16000, mem_max=64 * GI):
    return st.builds(Resources, st.integers(0, cpu_max), st.integers(0, mem_max))


EFFECTS = st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule"])
TAINTED_KEYS = st.lists(st.sampled_from(TAINT_KEYS), max_size=2, unique=True)
ZONE = st.sampled_from(ZONES)


@st.composite
def _taint_sets(draw):
    """Up to two taints of the keys templates may tolerate, with any effect."""
    return tuple(Taint(k, draw(EFFECTS), "ci") for k in draw(TAINTED_KEYS))


_TAINT_SETS = _taint_sets()


def taint_sets():
    return _TAINT_SETS


@functools.cache
def node_labels(index: int):
    return ZONE.map(lambda z: {"zone": z, "kubernetes.io/hostname": f"host-{index:03d}"})


CPUS = st.sampled_from([2000, 4000, 8000, 16000])
MEMS = st.sampled_from([4 * GI, 16 * GI, 32 * GI])


@functools.cache
def node_loads(cpu: int, mem: int):
    """requested, usage, in_flight strategies of a node of that size (built once per size)."""
    return (resources(cpu, mem), st.none() | resources(cpu, mem),
            st.just(Resources()) | resources(cpu // 2, mem // 2))


@st.composite
def _nodes(draw, index):
    alloc = Resources(draw(CPUS), draw(MEMS))
    requested, usage, in_flight = node_loads(alloc.cpu_millis, alloc.memory_bytes)
    return NodeState(name=f"node-{index:03d}", allocatable=alloc, requested=draw(requested),
                     usage=draw(usage), in_flight=draw(in_flight),
                     labels=draw(node_labels(index)), taints=draw(taint_sets()),
                     unschedulable=draw(st.booleans()), ready=draw(st.booleans()))


@functools.cache
def nodes(index=0):
    return _nodes(index)


@functools.cache
def node_count(max_nodes: int):
    return st.integers(0, max_nodes)


@st.composite
def clusters(draw, max_nodes=12):
    return [draw(nodes(i)) for i in range(draw(node_count(max_nodes)))]


CPU_TRIPLES = st.lists(st.integers(100, 8000), min_size=3, max_size=3)
MEM_TRIPLES = st.lists(st.integers(128 * 2**20, 16 * GI), min_size=3, max_size=3)
SELECTORS = st.just({}) | ZONE.map(lambda z: {"zone": z})
TOLERATED = st.lists(st.sampled_from(TAINT_KEYS), unique=True)
SECONDS = st.sampled_from([None, None, None, 60, 7200])
QUARTER = st.integers(0, 3)
TEMPLATE_PORTS = st.lists(st.sampled_from(PORTS), max_size=2, unique=True)
ZONE_RULES = st.sampled_from([None, None, ("In", "a"), ("NotIn", "a"), ("In", "b")])
EPHEMERAL = st.sampled_from([None, GI, 20 * GI])
GPUS_ASKED = st.integers(1, 2)


@st.composite
def _templates(draw, extras_too: bool):
    cpu = sorted(draw(CPU_TRIPLES))
    mem = sorted(draw(MEM_TRIPLES))
    selector = draw(SELECTORS)
    # now and then a NoExecute one for a while only: 60 s, or past the default deadline
    tolerations = tuple(Toleration(key=k, operator="Exists") if (s := draw(SECONDS)) is None
                        else Toleration(key=k, operator="Exists", effect="NoExecute",
                                        toleration_seconds=s) for k in draw(TOLERATED))
    # with extras_too, a quarter ask for more than cpu and memory
    extras = extras_too and draw(QUARTER) == 0
    ports = draw(TEMPLATE_PORTS) if extras else []
    patch = {"containers": [{"name": "jnlp", "ports": [
        {"containerPort": p, "hostPort": p, "protocol": proto, **({"hostIP": ip} if ip else {})}
        for proto, ip, p in ports]}]} if ports else {}
    # a podSpecPatch's own required node affinity on the zone, now and then (core.node_affinity)
    zone_rule = draw(ZONE_RULES)
    if zone_rule:
        patch = {**patch, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": zone_rule[0],
                                       "values": [zone_rule[1]]}]}]}}}}
    # one per node of its own pods, now and then (core.pod_anti_affinity: a pseudo port)
    anti = extras and draw(st.booleans())
    if anti:
        patch = {**patch, "affinity": {**patch.get("affinity", {}), **ANTI["affinity"]}}
    template = PodTemplate(cpu=CpuRange(min=f"{cpu[0]}m", default=f"{cpu[1]}m",
                                        max=f"{cpu[2]}m"),
                           memory=MemoryRange(min=mem[0], default=mem[1], max=mem[2]),
                           node_selector=selector, tolerations=tolerations,
                           ephemeral_storage=draw(EPHEMERAL) if extras else None,
                           resources={GPU: draw(GPUS_ASKED)} if extras and draw(
                               st.booleans()) else {},
                           pod_spec_patch=patch)
    return template.with_pod_labels(HEAVY) if anti else template


@functools.cache
def templates(extras_too: bool = False):
    return _templates(extras_too)


@settings(max_examples=200, deadline=None)
@given(clusters(), templates(extras_too=True), st.integers(0, 50))
def test_a_decision_never_exceeds_free_capacity_and_stays_in_range(cluster, template, ahead):
    decision = decide(template, cluster, waiting_ahead=ahead)
    if isinstance(decision, Placement):
        node = next(n for n in cluster if n.name == decision.node)
        if decision.by_requests:  # no node had its default cpu free by use (and min memory):
            # it fits by cpu requests; cpu is never shrunk below the default to avoid that
            # (of the nodes it is not asked to avoid, a PreferNoSchedule taint, when one of
            # those took it: placement.avoided, decided on them first)
            lo = Resources(template.cpu.default, template.memory.min)
            preferred = not avoided(node, template)
            assert not any(why_not(n, template) is None and lo.fits_in(free(n))
                           and lacks(n, needs(template)) is None
                           and not (preferred and avoided(n, template)) for n in cluster)
            assert decision.size.cpu_millis <= (node.allocatable - node.requested
                                                - node.in_flight).cpu_millis
            assert decision.size.memory_bytes <= free(node).memory_bytes
        else:
            assert decision.size.fits_in(free(node))
        lo = Resources(template.cpu.min, template.memory.min)
        hi = Resources(template.cpu.max, template.memory.max)
        assert lo.fits_in(decision.size) and decision.size.fits_in(hi)
        assert decision.hostname == node.labels["kubernetes.io/hostname"]
        assert decision.reason
        # and kube-scheduler would accept it: pod limit, ephemeral-storage, GPUs, hostPorts
        assert lacks(node, needs(template)) is None
    else:
        # Waiting is right only when no eligible node has room for the min size (and for
        # one more such pod, as the scheduler counts).
        lo = Resources(template.cpu.min, template.memory.min)
        assert not any(why_not(n, template) is None and lo.fits_in(free(n))
                       and lacks(n, needs(template)) is None for n in cluster)


def anywhere(template: PodTemplate) -> PodTemplate:
    """The template without its nodeSelector and node affinity: it may use any node."""
    return template.model_copy(update={"node_selector": {}, "pod_spec_patch": {
        k: v for k, v in template.pod_spec_patch.items() if k != "affinity"}})


@settings(max_examples=200, deadline=None)
@given(clusters(), templates())
def test_never_a_cordoned_notready_or_untolerated_node(cluster, template):
    decision = decide(template, cluster)
    if isinstance(decision, Placement):
        node = next(n for n in cluster if n.name == decision.node)
        assert node.ready and not node.unschedulable
        tolerated = {t.key for t in template.tolerations}
        for taint in node.taints:
            assert taint.effect == "PreferNoSchedule" or taint.key in tolerated
        assert all(node.labels.get(k) == v for k, v in template.node_selector.items())
        terms = template.required_node_terms
        assert terms is None or node_affinity.matches(node, terms)


@settings(deadline=None)  # generation time under CI load tripped the 200 ms default
@given(clusters(), templates(), st.integers(0, 20))
def test_a_decision_is_deterministic_whatever_the_node_order(cluster, template, ahead):
    assert decide(template, cluster, waiting_ahead=ahead) == \
        decide(template, list(reversed(cluster)), waiting_ahead=ahead)


@settings(deadline=None)  # generation time under CI load tripped the 200 ms default
@given(templates(), st.integers(0, 30))
def test_more_waiting_builds_never_make_an_agent_bigger(template, ahead):
    template = anywhere(template)
    node = NodeState("n", Resources(64000, 256 * GI))
    a = decide(template, [node], waiting_ahead=ahead)
    b = decide(template, [node], waiting_ahead=ahead + 5)
    assert b.size.fits_in(a.size)


def test_headroom_gives_max_and_pressure_gives_min():
    template = PodTemplate(cpu=CpuRange(min="500m", default="1", max="4"),
                           memory=MemoryRange(min="1Gi", default="2Gi", max="8Gi"))
    idle = [NodeState(f"n{i}", Resources(16000, 64 * GI)) for i in range(4)]
    # Memory grows to max with headroom (fewer OOM kills). CPU grows only with a CPU limit:
    # without one a bigger request only reserves, it does not make the build faster.
    assert decide(template, idle).size == Resources(1000, 8 * GI)
    limited = template.model_copy(update={"cpu_limit_factor": 1.0})
    assert decide(limited, idle).size == Resources(4000, 8 * GI)
    busy = [NodeState("n", Resources(4000, 16 * GI), requested=Resources(3000, 12 * GI))]
    # Under pressure both keep their default while a node has it: a smaller CPU request only
    # packs more builds onto what their real use saturates (issue 18), and OOM is not "slower"
    assert decide(template, busy, waiting_ahead=3).size == Resources(1000, 2 * GI)
    fuller = [NodeState("n", Resources(4000, 16 * GI), requested=Resources(3000, 14 * GI + 2**29))]
    # no node has the default: down to what the roomiest one has, never below min
    assert decide(template, fuller, waiting_ahead=3).size == Resources(1000, GI + 2**29)


def test_spread_picks_the_idlest_node_and_usage_counts_over_requests():
    template = PodTemplate()
    a = NodeState("a", Resources(8000, 32 * GI), requested=Resources(1000, 2 * GI),
                  usage=Resources(6000, 8 * GI))  # asked for little, uses a lot
    b = NodeState("b", Resources(8000, 32 * GI), requested=Resources(3000, 8 * GI),
                  usage=Resources(500, 4 * GI))
    c = NodeState("c", Resources(8000, 32 * GI), requested=Resources(2000, 4 * GI),
                  usage=Resources(1000, 4 * GI), unschedulable=True)
    decision = decide(template, [a, b, c])
    assert decision.node == "b"
    assert "lowest utilisation" in decision.reason


def test_in_flight_agents_spread_a_burst():
    template = PodTemplate()
    a = NodeState("a", Resources(8000, 32 * GI))
    b = NodeState("b", Resources(8000, 32 * GI), requested=Resources(500, 0))
    first = decide(template, [a, b])
    assert first.node == "a"
    a2 = NodeState("a", a.allocatable, in_flight=first.size)
    assert decide(template, [a2, b]).node == "b"


BUILD_SIZES = st.builds(Resources, st.integers(100, 4000), st.integers(2**20, 8 * GI))


BUILD_COUNT = st.integers(0, 15)


@st.composite
def waiting_builds(draw):
    return [WaitingBuild(f"b{i:02d}", PodTemplate(), draw(BUILD_SIZES))
            for i in range(draw(BUILD_COUNT))]


@settings(max_examples=200, deadline=None)
@given(waiting_builds(), clusters(max_nodes=6))
def test_nodes_needed_is_zero_iff_every_waiting_build_fits(waiting, cluster):
    reference = Resources(8000, 32 * GI)
    result = plan(waiting, cluster, reference)
    fits_now = all(v is not None and not v.startswith("new-") for v in result.assignment.values())
    assert (result.nodes_needed == 0) == fits_now
    # The plan is real: what it puts on existing nodes fits in their free capacity.
    for node in cluster:
        placed = [w.min_size for w in waiting if result.assignment[w.build_key] == node.name]
        assert Resources.total(placed).fits_in(free(node))
        assert all(why_not(node, w.template) is None for w in waiting
                   if result.assignment[w.build_key] == node.name)


@settings(max_examples=200, deadline=None)
@given(waiting_builds(), clusters(max_nodes=6), st.none() | st.integers(1, 4))
def test_the_waiting_builds_fit_onto_that_many_fresh_reference_nodes(waiting, cluster,
                                                                    fresh_pods):
    """`fresh_pods`: the pod slots a fresh node has for builds (its max-pods less its
    DaemonSets' pods): no fresh node is planned more builds than that."""
    reference = Resources(8000, 32 * GI)
    result = plan(waiting, cluster, reference,
                  fresh_limits=None if fresh_pods is None else Limits(pods=fresh_pods))
    fresh = {f"new-{i}": [] for i in range(result.nodes_needed)}
    for w in waiting:
        where = result.assignment[w.build_key]
        if where is not None and where.startswith("new-"):
            fresh[where].append(w.min_size)
    for sizes in fresh.values():
        assert sizes and Resources.total(sizes).fits_in(reference)
        assert fresh_pods is None or len(sizes) <= fresh_pods
    placed_somewhere = sum(len(v) for v in fresh.values()) + sum(
        1 for v in result.assignment.values() if v is not None and not v.startswith("new-"))
    assert placed_somewhere == len(waiting) - result.unplaceable == len(waiting)


@settings(max_examples=200, deadline=None)
@given(resources(8000, 32 * GI), clusters(max_nodes=6))
def test_one_waiting_build_needs_a_node_exactly_when_no_node_has_room(size, cluster):
    size = size.clamp_min(Resources(1, 1))
    build = WaitingBuild("only", PodTemplate(), size)
    has_room = any(why_not(n, build.template) is None and size.fits_in(free(n))
                   for n in cluster)
    assert (plan([build], cluster, Resources(8000, 32 * GI)).nodes_needed == 0) == has_room


def test_a_build_bigger_than_a_reference_node_is_counted_unplaceable():
    big = WaitingBuild("big", PodTemplate(), Resources(64000, GI))
    state = capacity_state([big], [], Resources(8000, 32 * GI))
    assert state.nodes_needed == 0 and state.unplaceable == 1


def test_shortfall_and_reference_shape():
    waiting = [WaitingBuild("x", PodTemplate(), Resources(500, GI)),
               WaitingBuild("y", PodTemplate(), Resources(1500, 3 * GI))]
    assert shortfall(waiting) == Resources(2000, 4 * GI)
    cluster = [NodeState("a", Resources(4000, 16 * GI)), NodeState("b", Resources(8000, 32 * GI)),
               NodeState("c", Resources(4000, 16 * GI))]
    assert reference_shape(cluster) == Resources(4000, 16 * GI)
    state = capacity_state(waiting, [], reference_shape(cluster))
    assert state.nodes_needed == 1 and state.shortfall == Resources(2000, 4 * GI)


def test_nodes_with_room_for_what_such_builds_use_come_first():
    template = PodTemplate()  # requests 1 cpu; its agents were seen using 3 cores
    small = NodeState("a-small", Resources(4000, 16 * GI), requested=Resources(1500, 0))
    big = NodeState("b-big", Resources(16000, 64 * GI), requested=Resources(9000, 0))
    assert decide(template, [small, big]).node == "a-small"  # lower share in use
    seen = Resources(3000, GI)
    decision = decide(template, [small, big], expected_use=seen)
    assert decision.node == "b-big"  # only it has 3 cores to spare
    assert decision.in_flight == Resources(3000, decision.size.memory_bytes)


def test_with_no_room_by_use_a_build_is_admitted_by_cpu_requests_on_the_least_loaded():
    """Issue 18: in a burst, waiting for headroom cost more turnaround than sharing a busy
    node's CPU. Memory is still counted by use: it is not compressible."""
    template = PodTemplate(cpu=CpuRange(min="1", default="1", max="1"),
                           memory=MemoryRange(min="2Gi", default="2Gi", max="2Gi"))
    hot = NodeState("a-hot", Resources(8000, 32 * GI), requested=Resources(2000, 4 * GI),
                    usage=Resources(7800, 4 * GI))
    warm = NodeState("b-warm", Resources(8000, 32 * GI), requested=Resources(2000, 4 * GI),
                     usage=Resources(7000, 4 * GI))
    full = NodeState("c-full", Resources(8000, 32 * GI), requested=Resources(7500, 4 * GI),
                     usage=Resources(100, 4 * GI))  # by requests: no room
    decision = decide(template, [hot, warm, full], waiting_ahead=5)
    assert isinstance(decision, Placement) and decision.by_requests
    assert decision.node == "b-warm" and decision.size == Resources(1000, 2 * GI)
    assert "admitted by cpu requests" in decision.reason and "of 2 nodes" in decision.reason
    # memory by use: a node whose pods hold its memory takes none
    held = NodeState("d", Resources(8000, 32 * GI), requested=Resources(2000, 4 * GI),
                     usage=Resources(7000, 31 * GI))
    assert isinstance(decide(template, [held]), Wait)


def test_under_pressure_cpu_is_not_shrunk_while_a_node_takes_the_default_by_requests():
    """Issue 18: a CPU request shrunk to the room left by use only let more builds onto
    nodes their use saturated. Memory may shrink; CPU stays at the default while a node
    takes it by requests, and shrinks only rather than the build wait."""
    template = PodTemplate(cpu=CpuRange(min="500m", default="1", max="1"),
                           memory=MemoryRange(min="1Gi", default="2Gi", max="2Gi"))
    # 3.3 cores held by use (2.64 / 0.8): 700m free by use, 3 cores by requests
    used = NodeState("a", Resources(4000, 16 * GI), requested=Resources(1000, 4 * GI),
                     usage=Resources(2640, 0))
    decision = decide(template, [used], waiting_ahead=3)
    assert decision.by_requests and decision.size == Resources(1000, 2 * GI)
    assert "no node has 1000m cpu, 1024Mi memory free by use" in decision.reason
    # only memory short: memory shrinks, CPU does not
    tight = NodeState("a", Resources(4000, 16 * GI), requested=Resources(1000, 14 * GI + 2**29))
    assert decide(template, [tight], waiting_ahead=3).size == Resources(1000, GI + 2**29)
    # 700m left by requests too: CPU shrinks rather than the build wait
    full = NodeState("a", Resources(4000, 16 * GI), requested=Resources(3300, 4 * GI))
    decision = decide(template, [full], waiting_ahead=3)
    assert not decision.by_requests and decision.size == Resources(700, 2 * GI)
    assert "shrunk from 1000m cpu" in decision.reason


def test_an_admitted_build_goes_where_it_adds_the_least_cpu_overload():
    """Issue 18: with no node having room by use, a build spread evenly over saturated nodes
    saturated more nodes than requests-only placement. It goes first where its request finds
    idle CPU, then to the saturated node where it is the smallest share (the biggest)."""
    template = PodTemplate(cpu=CpuRange(min="1", default="1", max="1"),
                           memory=MemoryRange(min="2Gi", default="2Gi", max="2Gi"))
    small = NodeState("a-small", Resources(4000, 16 * GI), requested=Resources(2000, 4 * GI),
                      usage=Resources(4000, 0))  # saturated
    big = NodeState("b-big", Resources(16000, 64 * GI), requested=Resources(8000, 8 * GI),
                    usage=Resources(16000, 0), in_flight=Resources(6000, 0))
    # saturated too, and more loaded by share: (16 / 0.8 + 6 + 1) / 16 against (4 / 0.8 + 1) / 4
    decision = decide(template, [small, big], waiting_ahead=5)
    assert decision.by_requests and decision.node == "b-big"
    assert "adds the least cpu overload (6%)" in decision.reason
    # a node with its request's worth of idle CPU comes before either
    idle = NodeState("c-idle", Resources(4000, 16 * GI), requested=Resources(2000, 4 * GI),
                     usage=Resources(2900, 0))  # 3.6 cores held by use: no room by use
    decision = decide(template, [small, big, idle], waiting_ahead=5)
    assert decision.node == "c-idle" and "overload (0%)" in decision.reason

"""nodes_needed for a build asking an extended resource (a GPU) that a node of the reference
shape has none of: counted on fresh nodes of its own pool's shape when its pool's nodes are
there (more nodes of the reference shape never start it; left out, a full GPU pool paged no
one), counted as before when none is (its node group at zero: the fresh node is assumed to
match it). plan and plan_on_index alike."""

from workers.core.capacity import WaitingBuild, plan, plan_on_index
from workers.core.cluster import NodeState, Resources, Taint
from workers.core.fit import Held, Limits
from workers.core.models import PodTemplate
from workers.core.placement_index import PlacementIndex

GI = 2**30
GPU = "nvidia.com/gpu"
CPU_SHAPE = Resources(4000, 16 * GI)
CPU_LIMITS = Limits(pods=110, ephemeral_bytes=100 * GI)  # a CPU node: no GPU
GPU_TEMPLATE = PodTemplate(cpu={"min": "1", "default": "1", "max": "1"},
                           memory={"min": "1Gi", "default": "1Gi", "max": "1Gi"},
                           resources={GPU: 1},
                           tolerations=[{"key": GPU, "operator": "Exists",
                                         "effect": "NoSchedule"}])


def both(waiting, nodes):
    index = PlacementIndex()
    index.replace_all(nodes)
    reference = plan(waiting, nodes, CPU_SHAPE, fresh_limits=CPU_LIMITS)
    assert plan_on_index(waiting, index, CPU_SHAPE, fresh_limits=CPU_LIMITS) == reference
    return reference


GPU_SHAPE = Resources(8000, 32 * GI)


def gpu_node(name, gpus=1, taken=1):
    return NodeState(name, GPU_SHAPE, taints=(Taint(GPU, "NoSchedule", "present"),),
                     limits=Limits(pods=110, extended=((GPU, gpus),)),
                     held=Held(pods=taken, extended=((GPU, taken),) if taken else ()))


CPU_TEMPLATE = PodTemplate(cpu={"min": "1", "default": "1", "max": "1"},
                           memory={"min": "1Gi", "default": "1Gi", "max": "1Gi"})


def test_a_gpu_build_whose_pool_is_full_is_counted_on_a_node_of_its_pool():
    """The GPU pool (at its maximum) is full; a CPU warm agent short of its pool's min (or a
    CPU build about to be placed) fits the CPU nodes and makes their shape the reference:
    the GPU build was unplaceable and nodes_needed 0, so CIClusterShortOfCapacity never
    paged while it waited."""
    cpu = [NodeState(f"cpu-{i}", CPU_SHAPE, limits=CPU_LIMITS) for i in (1, 2, 3)]
    waiting = [WaitingBuild("g", GPU_TEMPLATE, Resources(1000, GI)),
               WaitingBuild("warm:cpu:0", CPU_TEMPLATE, Resources(1000, GI))]
    result = both(waiting, cpu + [gpu_node("gpu-1")])
    assert result.assignment == {"g": "new-0-0", "warm:cpu:0": "cpu-1"}
    assert result.nodes_needed == 1


def test_gpu_builds_are_counted_on_nodes_of_their_pool_apart_from_cpu_builds():
    """CPU nodes full: a CPU build takes a fresh CPU node; two GPU builds, on a pool of one
    GPU a node, take two of the pool's, never a CPU node's room; one asking two GPUs no
    node of its pool has is unplaceable."""
    full_cpu = [NodeState(f"cpu-{i}", CPU_SHAPE, requested=CPU_SHAPE, limits=CPU_LIMITS)
                for i in (1, 2)]
    two = PodTemplate(cpu=GPU_TEMPLATE.cpu, memory=GPU_TEMPLATE.memory, resources={GPU: 2},
                      tolerations=GPU_TEMPLATE.tolerations)
    waiting = [WaitingBuild("c", CPU_TEMPLATE, Resources(1000, GI)),
               WaitingBuild("g1", GPU_TEMPLATE, Resources(1000, GI)),
               WaitingBuild("g2", GPU_TEMPLATE, Resources(1000, GI)),
               WaitingBuild("g3", two, Resources(1000, GI))]
    result = both(waiting, full_cpu + [gpu_node("gpu-1")])
    assert result.assignment == {"c": "new-0", "g1": "new-0-1", "g2": "new-0-0", "g3": None}
    assert result.nodes_needed == 3 and result.unplaceable == 1


def test_a_gpu_build_whose_pool_is_at_zero_is_counted_on_a_fresh_node():
    full_cpu = NodeState("cpu-1", CPU_SHAPE, requested=CPU_SHAPE, limits=CPU_LIMITS)
    result = both([WaitingBuild("g", GPU_TEMPLATE, Resources(1000, GI))], [full_cpu])
    assert result.assignment == {"g": "new-0"} and result.nodes_needed == 1

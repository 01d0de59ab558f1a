"""nodes_needed for a build asking an extended resource (a GPU) that a node of the reference
shape has none of: unplaceable by that shape when its own pool's nodes are there (more nodes
of the reference shape never start it), counted as before when none is (its node group at
zero: the fresh node is assumed to match it). plan and plan_on_index alike."""

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


def test_a_gpu_build_whose_pool_is_there_is_unplaceable_by_the_cpu_shape():
    full_cpu = NodeState("cpu-1", CPU_SHAPE, requested=CPU_SHAPE, limits=CPU_LIMITS)
    gpu = NodeState("gpu-1", Resources(8000, 32 * GI),
                    taints=(Taint(GPU, "NoSchedule", "present"),),
                    limits=Limits(pods=110, extended=((GPU, 1),)),
                    held=Held(pods=1, extended=((GPU, 1),)))
    result = both([WaitingBuild("g", GPU_TEMPLATE, Resources(1000, GI))], [full_cpu, gpu])
    assert result.assignment == {"g": None} and result.nodes_needed == 0


def test_a_gpu_build_whose_pool_is_at_zero_is_counted_on_a_fresh_node():
    full_cpu = NodeState("cpu-1", CPU_SHAPE, requested=CPU_SHAPE, limits=CPU_LIMITS)
    result = both([WaitingBuild("g", GPU_TEMPLATE, Resources(1000, GI))], [full_cpu])
    assert result.assignment == {"g": "new-0"} and result.nodes_needed == 1

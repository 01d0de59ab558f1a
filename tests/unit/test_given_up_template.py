"""Which template's holdings an agent given up still holds (workers.warm.giving_way._held_too):
read from its name (workers.warm.agents.new_name), whose job slug is cut at 32 characters
and lower-cased with '_' and '.' as '-' (workers.core.keys._slug). Two templates whose names
share that slug make agents whose names tell neither apart."""

from workers.core.cluster import Resources
from workers.core.fit import Held, NOTHING_HELD
from workers.core.models import PodTemplate
from workers.core.warm_pool import IdleAgent
from workers.warm import agents
from workers.warm.giving_way import _held_too

GPU = "nvidia.com/gpu"
CPU_NAME, GPU_NAME = "android-emulator-api-34-x86_64-cpu", "android-emulator-api-34-x86_64-gpu"


def given(name: str) -> IdleAgent:
    return IdleAgent(name, "a", Resources(1000, 2**30), 0.0)


def test_an_agent_of_a_template_sharing_its_slug_with_a_gpu_one_frees_no_gpu():
    templates = {GPU_NAME: PodTemplate(resources={GPU: 1}), CPU_NAME: PodTemplate()}
    # its name could be either template's: it is counted holding what both hold (a pod slot),
    # never a GPU its pod may not hold (counted free, that GPU placed a GPU build on its
    # node, in give_way's sum, that the node had not got: the build waited, no agent gave way)
    (out,) = _held_too(templates, [given(agents.new_name(CPU_NAME))])
    assert out.held == Held(1), out.held


def test_an_agent_of_a_template_with_a_slug_of_its_own_holds_its_templates():
    templates = {"gpu": PodTemplate(resources={GPU: 1}), "small": PodTemplate()}
    (out,) = _held_too(templates, [given(agents.new_name("gpu"))])
    assert dict(out.held.extended) == {GPU: 1} and out.held.pods == 1, out.held


def test_an_agent_of_a_template_removed_from_config_holds_what_its_record_says():
    (out,) = _held_too({"small": PodTemplate()}, [given(agents.new_name("gone"))])
    assert out.held == NOTHING_HELD

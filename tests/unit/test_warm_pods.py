"""An idle warm agent's pod metadata (workers.core.warm_pods): evictable by the node
autoscalers, everything else the agent pod's. The claim's patch is tested on kmock
(tests/integration/test_warm_autoscalers.py)."""

import copy

import kubernetes_validate

from tests.unit.test_pods import render
from workers.config.pod_schema import KUBERNETES_SCHEMA_VERSION
from workers.core.pods import DO_NOT_DISRUPT, WARM_LABEL
from workers.core.warm_pods import idle_warm


def test_an_idle_warm_pod_is_evictable_and_keeps_the_rest_of_its_metadata():
    pod = render({})
    before = copy.deepcopy(pod)
    idle = idle_warm(pod)
    assert pod == before  # the manifest given is left alone
    kubernetes_validate.validate(idle, KUBERNETES_SCHEMA_VERSION, strict=True)
    assert idle["metadata"]["annotations"] == {
        **{k: v for k, v in pod["metadata"]["annotations"].items() if k not in DO_NOT_DISRUPT},
        "cluster-autoscaler.kubernetes.io/safe-to-evict": "true"}
    assert idle["metadata"]["labels"] == {**pod["metadata"]["labels"], WARM_LABEL: "true"}
    assert idle["spec"] == pod["spec"] and idle["metadata"]["name"] == pod["metadata"]["name"]


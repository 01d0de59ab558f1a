"""workers.core.claims: which claims pods on several nodes would need at once, from the
templates alone (an undeclared claim is taken as ReadWriteOnce)."""

import pytest

from workers.core.claims import pinned_host, shared_claims
from workers.core.models import PodTemplate


def template(claim="cache", mode=None, where="volume", **fields) -> PodTemplate:
    if where == "volume":
        volume = {"name": "c", "mountPath": "/c", "persistentVolumeClaim": {"claimName": claim}}
        if mode:
            volume["accessMode"] = mode
        return PodTemplate.model_validate({"volumes": [volume], **fields})
    if where == "workspace":
        source = {"persistentVolumeClaim": {"claimName": claim}}
        if mode:
            source["accessMode"] = mode
        return PodTemplate.model_validate({"workspaceVolume": source, **fields})
    return PodTemplate.model_validate({"podSpecPatch": {"volumes": [
        {"name": "c", "persistentVolumeClaim": {"claimName": claim}}]}, **fields})


@pytest.mark.parametrize("where", ["volume", "workspace", "patch"])
def test_an_uncapped_template_sharing_an_undeclared_claim_is_warned_about(where):
    [found] = shared_claims({"t": template(where=where)}, None)
    assert found.claim == "cache"
    assert "taken as ReadWriteOnce" in found.reason and "any number of pods" in found.reason
    assert "Multi-Attach" in found.reason and "ReadWriteMany" in found.reason
    assert found.loc[:2] == ("templates", "t")


@pytest.mark.parametrize("templates,max_agents", [
    ({"t": template(mode="ReadWriteMany")}, None),  # declared shareable
    ({"t": template(mode="ReadOnlyMany")}, None),
    ({"t": template(maxConcurrent=1)}, None),  # one pod at a time
    ({"t": template()}, 1),  # one agent at all
    ({"t": template(nodeSelector={"kubernetes.io/hostname": "node-a"})}, None),  # one node
    ({"t": template(podSpecPatch={"nodeSelector": {"kubernetes.io/hostname": "node-a"}})},
     None),
    ({"t": PodTemplate(volumes=[{"name": "c", "mountPath": "/c", "emptyDir": {}}])}, None),
    ({"t": PodTemplate(workspaceVolume={"ephemeral": {"volumeClaimTemplate": {"spec": {}}}})},
     None),  # a fresh claim per pod
])
def test_claims_that_cannot_be_needed_on_two_nodes_at_once_are_fine(templates, max_agents):
    assert shared_claims(templates, max_agents) == []


def test_two_capped_templates_on_one_claim_can_still_meet_on_two_nodes():
    [found] = shared_claims({"a": template(maxConcurrent=1), "b": template(maxConcurrent=1)},
                            None)
    assert "up to 2 pods of templates a, b" in found.reason and found.loc[1] == "a"
    # ...unless both are pinned to the same node
    pinned = {"nodeSelector": {"kubernetes.io/hostname": "n"}}
    assert shared_claims({"a": template(**pinned), "b": template(**pinned)}, None) == []
    other = {"nodeSelector": {"kubernetes.io/hostname": "m"}}
    assert len(shared_claims({"a": template(**pinned), "b": template(**other)}, None)) == 1


def test_max_agents_bounds_how_many_pods_meet():
    [found] = shared_claims({"t": template()}, 3)
    assert "up to 3 pods" in found.reason


def test_a_declared_read_write_once_claim_is_named_so():
    [found] = shared_claims({"t": template(mode="ReadWriteOnce")}, None)
    assert "is ReadWriteOnce and" in found.reason


def test_read_write_once_pod_is_one_pod_even_on_one_node():
    pinned = template(mode="ReadWriteOncePod", nodeSelector={"kubernetes.io/hostname": "n"})
    [found] = shared_claims({"t": pinned}, None)
    assert "ReadWriteOncePod" in found.reason and "every pod but one" in found.reason
    assert shared_claims({"t": template(mode="ReadWriteOncePod", maxConcurrent=1)}, None) == []


def test_pinned_host_reads_the_node_selector_and_the_patch():
    assert pinned_host(PodTemplate()) is None
    assert pinned_host(PodTemplate(podSpecPatch={"nodeSelector": {
        "kubernetes.io/hostname": "x"}})) == "x"

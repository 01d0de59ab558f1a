"""core.limit_ranges: a namespace's LimitRange default limits met before the API server's
LimitRanger (plugin/pkg/admission/limitranger/admission.go) would set them below a request."""

from workers.core.limit_ranges import (
    default_limits, limit_ratios, with_explicit_limits, with_init_containers_at_least)


def limit_range(*items):
    return {"spec": {"limits": list(items)}}


def container(name, requests, limits=None):
    return {"name": name, "resources": {"requests": requests, "limits": limits or {}}}


def test_the_smallest_container_default_of_every_limit_range_is_taken():
    ranges = [limit_range({"type": "Container", "default": {"cpu": "1", "memory": "1Gi"}},
                          {"type": "Pod", "max": {"cpu": "100m"}}),
              limit_range({"type": "Container", "default": {"cpu": "500m"}})]
    assert default_limits(ranges) == {"cpu": "500m", "memory": "1Gi"}
    assert default_limits([limit_range({"type": "PersistentVolumeClaim"})]) == {}


def test_a_container_asking_more_than_the_default_names_its_request_as_its_limit():
    manifest = {"metadata": {"name": "p"}, "spec": {
        "initContainers": [container("init", {"cpu": "2"})],
        "containers": [container("build", {"cpu": "2", "memory": "1Gi"}, {"memory": "1Gi"}),
                       container("small", {"cpu": "100m"}),
                       container("own", {"cpu": "2"}, {"cpu": "3"})]}}
    out = with_explicit_limits(manifest, {"cpu": "500m", "memory": "512Mi"})
    limits = {c["name"]: c["resources"]["limits"]
              for c in out["spec"]["initContainers"] + out["spec"]["containers"]}
    assert limits == {"init": {"cpu": "2"}, "build": {"memory": "1Gi", "cpu": "2"},
                      "small": {}, "own": {"cpu": "3"}}
    assert manifest["spec"]["containers"][0]["resources"]["limits"] == {"memory": "1Gi"}


def test_a_manifest_nothing_to_change_in_is_returned_as_it_is():
    manifest = {"spec": {"containers": [container("c", {"cpu": "100m"})]}}
    assert with_explicit_limits(manifest, {}) is manifest
    assert with_explicit_limits(manifest, {"cpu": "1"}) is manifest


def test_a_max_limit_to_request_ratio_is_met_by_the_most_it_allows():
    """limitRequestRatioConstraint refuses a container naming no limit, and one whose limit
    (the default put on it) is more than the ratio times its request; the limit given is the
    most the ratio allows (not the request: an agent at 100m would be throttled to it)."""
    ranges = [limit_range({"type": "Container", "maxLimitRequestRatio": {"cpu": "4"}}),
              limit_range({"type": "Container", "maxLimitRequestRatio": {"cpu": "3"}})]
    assert limit_ratios(ranges) == {"cpu": "3"}
    manifest = {"spec": {"containers": [container("agent", {"cpu": "100m"}),
                                        container("build", {"cpu": "1500m"}),
                                        container("own", {"cpu": "1"}, {"cpu": "2"}),
                                        container("memory", {"memory": "1Gi"})]}}

    def limits(out):
        return {c["name"]: c["resources"]["limits"] for c in out["spec"]["containers"]}
    # no default: every container asking CPU names a limit
    assert limits(with_explicit_limits(manifest, {}, {"cpu": "3"})) == {
        "agent": {"cpu": "300m"}, "build": {"cpu": "4500m"}, "own": {"cpu": "2"}, "memory": {}}
    # a default of 2: kept where the ratio allows it (build: 2 <= 4.5), the request where
    # below it, the ratio's most where above it (agent: 2 > 300m)
    assert limits(with_explicit_limits(manifest, {"cpu": "2"}, {"cpu": "3"})) == {
        "agent": {"cpu": "300m"}, "build": {}, "own": {"cpu": "2"}, "memory": {}}
    assert limits(with_explicit_limits(manifest, {"cpu": "1"}, {"cpu": "3"}))["build"] == {
        "cpu": "1500m"}


def test_init_containers_below_a_min_ask_it_and_a_limit_below_it_is_raised_too():
    """The LimitRanger checks init containers against a Container min (admission.go
    PodLimitFunc); containers are the pod's size, left as placement decided them."""
    pod = {"spec": {"initContainers": [container("agent", {"cpu": "100m", "memory": "256Mi"},
                                                 {"memory": "256Mi"})],
                    "containers": [container("build", {"cpu": "100m"})]}}
    met = with_init_containers_at_least(pod, {"cpu": "200m", "memory": "128Mi"})
    [init] = met["spec"]["initContainers"]
    assert init["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"},
                                 "limits": {"memory": "256Mi"}}
    assert met["spec"]["containers"] == pod["spec"]["containers"]
    raised = with_init_containers_at_least(pod, {"memory": "1Gi"})["spec"]["initContainers"]
    assert raised[0]["resources"]["limits"] == {"memory": "1Gi"}
    assert with_init_containers_at_least(pod, {"cpu": "50m"}) is pod


def test_the_default_request_a_container_asking_none_gets():
    """SetDefaults_LimitRangeItem (pkg/apis/core/v1/defaults.go): default from max, then
    defaultRequest from default, then from min; several LimitRanges: the largest counted."""
    from workers.core.limit_ranges import default_requests
    assert default_requests([{"spec": {"limits": [
        {"type": "Container", "max": {"ephemeral-storage": "8Gi"}, "min": {"cpu": "100m"},
         "default": {"example.com/fpga": "1"}, "defaultRequest": {"memory": "256Mi"}},
        {"type": "Pod", "max": {"ephemeral-storage": "1Gi"}}]}},
        {"spec": {"limits": [{"type": "Container", "defaultRequest": {
            "ephemeral-storage": "2Gi"}, "max": {"ephemeral-storage": "20Gi"}}]}}]) == {
        "ephemeral-storage": "8Gi", "cpu": "100m", "example.com/fpga": "1", "memory": "256Mi"}

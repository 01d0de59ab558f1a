"""workers.adapters.kube_admission: the LimitRanger's refusals named from its own words
(plugin/pkg/admission/limitranger/admission.go minConstraint, maxConstraint,
limitRequestRatioConstraint; errors aggregated as "[a, b]" by utilerrors.NewAggregate)."""

import pytest

from workers.adapters.kube_admission import (
    limit_range_words, quota_exceeded, quota_full_words, quota_never_fits, quota_paused,
    quota_uncounted_words, quota_unnamed_words, runtime_class_words)
from workers.core.quantity import parse_quantity


def test_a_broken_limit_to_request_ratio_is_named_with_the_min_and_max_in_order():
    message = ('pods "cia-build-1" is forbidden: [maximum memory usage per Container is 1Gi, '
               'but limit is 2Gi., cpu max limit to request ratio per Container is 2, but '
               'provided ratio is 4.000000., cpu max limit to request ratio per Container is '
               '2, but no limit is specified or limit is 0.]')
    assert limit_range_words(message) == (
        "maximum memory usage per Container is 1Gi, but limit is 2Gi; cpu max limit to "
        "request ratio per Container is 2, but the ratio is 4.000000; cpu max limit to "
        "request ratio per Container is 2, and no limit is given")


def test_a_message_not_the_plugins_names_nothing():
    assert limit_range_words('admission webhook "x" denied the request: cpu') is None


def test_a_pod_count_at_zero_is_a_pause_not_a_pod_too_big_for_the_quota():
    """ResourceQuota's words (resourcequota/controller.go checkRequest): `pods` and
    `count/pods` count pods, whatever their size; the resources beside them still tell."""
    def refusal(requested, used, limited):
        return (f'pods "cia-build-1" is forbidden: exceeded quota: pause, requested: '
                f"{requested}, used: {used}, limited: {limited}")
    assert quota_never_fits(refusal("pods=1", "pods=0", "pods=0")) is None
    assert quota_never_fits(refusal("count/pods=1", "count/pods=0", "count/pods=0")) is None
    assert quota_never_fits(refusal("pods=1,requests.cpu=2", "pods=0,requests.cpu=0",
                                    "pods=0,requests.cpu=1")) == (
        "ResourceQuota pause allows requests.cpu=1 in all, the pod asks requests.cpu=2")
    # A pod count of 0 is the admin's pause (the build waits as paused, which no alert pages
    # for); a full count, or any other resource at 0, is a quota that pods ending free.
    assert quota_paused(refusal("pods=1", "pods=0", "pods=0"))
    assert quota_paused(refusal("count/pods=1", "count/pods=0", "count/pods=0"))
    assert quota_paused(refusal("pods=1,requests.cpu=2", "pods=0,requests.cpu=0",
                                "pods=0,requests.cpu=1"))
    assert not quota_paused(refusal("pods=1", "pods=10", "pods=10"))
    assert not quota_paused(refusal("requests.cpu=2", "requests.cpu=0", "requests.cpu=0"))
    assert not quota_paused('admission webhook "x" denied: pods=0')


def test_a_quota_needing_limits_no_container_names_is_named_with_the_containers():
    """podEvaluator.Constraints' words (pkg/quota/v1/evaluator/core/pods.go), as checkRequest
    prefixes them (resourcequota/controller.go)."""
    message = ('pods "cia-build-1" is forbidden: failed quota: compute: must specify '
               "limits.cpu for: build,jnlp; requests.memory for: copy-agent")
    assert quota_unnamed_words(message) == (
        "ResourceQuota compute needs limits.cpu on every container (none on build, jnlp); "
        "requests.memory on every container (none on copy-agent)")
    assert quota_unnamed_words('admission webhook "x" denied: must specify cpu') is None


def test_a_quota_not_counted_yet_is_named_and_never_taken_for_the_pod_too_big():
    # controller.go checkRequest, hasUsageStats: the quota controller has not synced it yet.
    message = ('pods "cia-x" is forbidden: status unknown for quota: compute, resources: '
               "limits.cpu,pods,requests.cpu")
    assert quota_uncounted_words(message) == "ResourceQuota compute: use not counted yet"
    assert quota_never_fits(message) is None
    assert quota_uncounted_words('admission webhook "x" denied the request') is None


def refusal(name, requested, used, limited):
    """ResourceQuota's words, as checkRequest puts them (resourcequota/controller.go)."""
    return (f'pods "cia-build-1" is forbidden: exceeded quota: {name}, requested: '
            f"{requested}, used: {used}, limited: {limited}")


@pytest.mark.parametrize("hard", ["1e3", "1E3", "10", "500m", "2k"])
def test_a_pod_count_in_any_form_the_api_server_prints_is_read_never_raised(hard):
    """resource.Quantity's String() prints a decimal exponent ("1e3") or an SI suffix; a
    pod count below 1 ("500m") admits no pod: a pause as 0 is. A quantity the regex let
    through that parse_quantity refused ("5e") raised ValueError out of the API call."""
    message = refusal("ci", "pods=1", f"pods={hard}", f"pods={hard}")
    assert quota_paused(message) is (hard == "500m")
    assert quota_never_fits(message) is None
    (exceeded,) = quota_exceeded(message)
    assert exceeded.resource == "pods" and exceeded.hard == parse_quantity(hard)


@pytest.mark.parametrize("odd", ["5e", "1.2.3", "1Kib", "", "many"])
def test_a_quantity_that_is_none_is_left_unread_not_raised(odd):
    message = refusal("gpu", "requests.nvidia.com/gpu=1,pods=1",
                      f"requests.nvidia.com/gpu={odd},pods={odd}",
                      f"requests.nvidia.com/gpu={odd},pods={odd}")
    assert quota_paused(message) is False
    assert quota_never_fits(message) is None
    assert quota_full_words(message) is None
    assert quota_exceeded(message) is None  # what a pod going frees is unknown


def test_every_quota_named_is_read_not_only_the_first():
    """The API server names the first quota the pod exceeds (checkRequest returns there);
    a message naming more (an aggregate, utilerrors.NewAggregate's "[a, b]") is read whole:
    a pause behind a full quota is a pause, and each quota's shortfall is named."""
    message = "[%s, %s]" % tuple([
        refusal("compute", "requests.nvidia.com/gpu=1", "requests.nvidia.com/gpu=4",
                "requests.nvidia.com/gpu=4"),
        refusal("pause", "count/pods=1", "count/pods=3", "count/pods=0")])
    assert quota_paused(message)
    assert quota_full_words(message) == (
        "ResourceQuota compute: requests.nvidia.com/gpu 4 of 4 used, the pod asks 1; "
        "ResourceQuota pause: count/pods 3 of 0 used, the pod asks 1")
    assert [(e.quota, e.resource) for e in quota_exceeded(message)] == [
        ("compute", "requests.nvidia.com/gpu"), ("pause", "count/pods")]
    too_big = "[%s, %s]" % tuple([refusal("a", "pods=1", "pods=5", "pods=5"),
                         refusal("b", "requests.cpu=2", "requests.cpu=0", "requests.cpu=1")])
    assert quota_never_fits(too_big) == (
        "ResourceQuota b allows requests.cpu=1 in all, the pod asks requests.cpu=2")


def test_a_runtime_class_refusal_is_named_from_its_parts_only():
    """The RuntimeClass admission's words (plugin/pkg/admission/runtimeclass/admission.go):
    a missing class, and a node selector conflict, rebuilt from the names and values
    matched; a message of neither (a webhook quoting the pod) gives None."""
    assert runtime_class_words('pods "cia-1" is forbidden: pod rejected: RuntimeClass '
                               '"gvisor" not found') == "RuntimeClass gvisor not found"
    assert runtime_class_words(
        'pods "cia-1" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[pool] = '
        'kata; pod.spec.nodeSelector[pool] = ci') == (
        "RuntimeClass nodeSelector pool=kata conflicts with the template's pool=ci")
    assert runtime_class_words('admission webhook "x" denied: env SECRET=abc') is None

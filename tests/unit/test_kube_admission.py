"""workers.adapters.kube_admission: the LimitRanger's refusals named from its own words
(plugin/pkg/admission/limitranger/admission.go minConstraint, maxConstraint,
limitRequestRatioConstraint; errors aggregated as "[a, b]" by utilerrors.NewAggregate)."""

from workers.adapters.kube_admission import (
    limit_range_words, quota_never_fits, quota_paused, quota_uncounted_words,
    quota_unnamed_words)


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

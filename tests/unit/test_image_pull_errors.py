"""Failed image pulls: for good (fail at once) or for now (the kubelet retries; fail after a
bounded time). Messages as the kubelet writes them in waiting.message: the container runtime's
error through CRI (containerd core/remotes/docker resolver.go, fetcher.go; the CRI plugin's
"failed to pull and unpack image"), wrapped by the back-off from Kubernetes 1.32
(pkg/kubelet/images/image_manager.go prevPullErrMsg)."""

import pytest

from workers.adapters.kube_objects import pod_info
from workers.core import image_pulls
from workers.core.redaction import redact
from workers.core.start_failures import start_failure

IMAGE = "registry.example.com/ci/maven:3.9"
PULL = f'rpc error: code = Unknown desc = failed to pull and unpack image "{IMAGE}": '
FOR_GOOD = [
    f'rpc error: code = NotFound desc = failed to pull and unpack image "{IMAGE}": failed to '
    f'resolve reference "{IMAGE}": {IMAGE}: not found',
    PULL + f'failed to resolve reference "{IMAGE}": pull access denied, repository does not '
           'exist or may require authorization: server message: insufficient_scope: '
           'authorization failed',
    # credentials offered and refused (containerd authorizer.go doBearerAuth: the POST's 401
    # is tried again as a GET with them; its error wrapped "failed to fetch oauth token")
    PULL + f'failed to resolve reference "{IMAGE}": failed to authorize: failed to fetch '
           'oauth token: unexpected status from GET request to https://auth.example.com/'
           'token?scope=repository%3Aci%2Fmaven%3Apull&service=registry: 401 Unauthorized',
    PULL + 'failed to resolve reference: unexpected status from HEAD request: 403 Forbidden',
    'Error response from daemon: manifest for maven:3.9-typo not found: manifest unknown',
    'unauthorized: authentication required',
]
# the registry's own host unknown to the DNS (Go net errNoSuchHost: NXDOMAIN), as containerd
# (resolver.go "failed to do request") and CRI-O ("pinging container registry") write it: a
# typo in the host, or a private zone's DNS failing (Go's resolver prefers the original name's
# NXDOMAIN over a search domain's SERVFAIL: net/dnsclient_unix.go "Prefer error for original
# name"). For good only once a later try says it again (image_pulls.host_unknown_again).
HOST_UNKNOWN = [
    PULL + 'failed to resolve reference "regsitry.example.com/ci/maven:3.9": failed to do '
           'request: Head "https://regsitry.example.com/v2/ci/maven/manifests/3.9": dial tcp: '
           'lookup regsitry.example.com on 10.96.0.10:53: no such host',
    'initializing source docker://regsitry.example.com/ci/maven:3.9: pinging container '
    'registry regsitry.example.com: Get "https://regsitry.example.com/v2/": dial tcp: lookup '
    'regsitry.example.com on 10.0.0.2:53: no such host',
]
FOR_NOW = [
    PULL + 'failed to copy: httpReadSeeker: failed open: unexpected status code https://'
           'registry-1.docker.io/v2/library/maven/manifests/3.9: 429 Too Many Requests - '
           'Server message: toomanyrequests: You have reached your pull rate limit.',
    PULL + 'failed to resolve reference: unexpected status from HEAD request to https://'
           'registry.example.com/v2/ci/maven/manifests/3.9: 503 Service Unavailable',
    PULL + 'failed to resolve reference: failed to do request: Head "https://registry.example'
           '.com/v2/": dial tcp 10.0.0.7:443: i/o timeout',
    PULL + 'failed to copy: read tcp 10.0.0.5:50432->10.0.0.7:443: read: connection reset by '
           'peer',
    f'Back-off pulling image "{IMAGE}"',  # a kubelet before 1.32: names no error
    "",
    # the host of a layer's redirect (a CDN) unknown to the DNS: the registry's own host
    # resolved, its manifest read (containerd fetcher.go "failed to copy")
    PULL + 'failed to copy: httpReadSeeker: failed open: failed to do request: Get "https://'
           'production.cloudflare.docker.com/registry-v2/docker/registry/v2/blobs/sha256/24/'
           '24c6/data": dial tcp: lookup production.cloudflare.docker.com on 10.0.0.2:53: no '
           'such host',
    # the resolver down or failing, not the name unknown (Go net: SERVFAIL is "server
    # misbehaving", no answer an i/o timeout; the cgo resolver's EAI_AGAIN)
    PULL + 'failed to resolve reference: failed to do request: Head "https://registry.example'
           '.com/v2/ci/maven/manifests/3.9": dial tcp: lookup registry.example.com on '
           '10.0.0.2:53: server misbehaving',
    PULL + 'failed to resolve reference: failed to do request: Head "https://registry.example'
           '.com/v2/ci/maven/manifests/3.9": dial tcp: lookup registry.example.com on '
           '10.0.0.2:53: read udp 10.0.0.5:41234->10.0.0.2:53: i/o timeout',
    PULL + 'failed to resolve reference: failed to do request: Head "https://registry.example'
           '.com/v2/": dial tcp: lookup registry.example.com: Temporary failure in name '
           'resolution',
    # a token service's 401 to a request with no credentials (containerd authorizer.go
    # doBearerAuth "failed to fetch anonymous token"; resolver.go "failed to authorize"):
    # no credentials were refused; its 5xx, with credentials or without
    PULL + f'failed to resolve reference "{IMAGE}": failed to authorize: failed to fetch '
           'anonymous token: unexpected status from GET request to https://auth.docker.io/'
           'token?scope=repository%3Alibrary%2Fmaven%3Apull&service=registry.docker.io: 401 '
           'Unauthorized',
    PULL + f'failed to resolve reference "{IMAGE}": failed to authorize: failed to fetch '
           'anonymous token: unexpected status: 401 Unauthorized',  # containerd 1.x
    PULL + f'failed to resolve reference "{IMAGE}": failed to authorize: failed to fetch '
           'oauth token: unexpected status: 503 Service Unavailable',
    PULL + f'failed to resolve reference "{IMAGE}": failed to authorize: failed to fetch '
           'anonymous token: unexpected status from GET request to https://auth.docker.io/'
           'token: 502 Bad Gateway',
]


@pytest.mark.parametrize("message", FOR_GOOD)
@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_a_pull_that_can_never_pass_is_for_good(reason, message):
    if reason == "ImagePullBackOff":
        message = f'Back-off pulling image "{IMAGE}": ErrImagePull: {message}'
    assert image_pulls.for_good(reason, message)


@pytest.mark.parametrize("message", FOR_NOW)
@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_a_rate_limit_a_5xx_or_the_network_is_for_now(reason, message):
    assert not image_pulls.for_good(reason, message)


def test_other_fatal_reasons_and_an_unavailable_registry():
    assert image_pulls.for_good("InvalidImageName", 'couldn\'t parse image name "a b"')
    assert image_pulls.for_good("CreateContainerConfigError", 'secret "x" not found')
    assert not image_pulls.for_good(
        "RegistryUnavailable", f"image pull failed for {IMAGE} because the registry is "
                               "unavailable: not found")


def pulling(reason, message, *, start="2024-05-01T10:01:00Z"):
    return pod_info({
        "metadata": {"name": "cia-agent", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Pending", "startTime": start, "containerStatuses": [{
            "name": "jnlp", "ready": False, "restartCount": 0, "image": IMAGE, "imageID": "",
            "state": {"waiting": {"reason": reason, "message": message}}}]}})


TAKEN = 1714557660.0  # 10:01:00, status.startTime


def test_a_pull_failing_for_now_fails_only_after_the_bound_from_the_kubelet_taking_it():
    pod = pulling("ErrImagePull", FOR_NOW[0])
    assert pod.start_time == TAKEN
    assert start_failure(pod) is None  # no time given: never
    assert start_failure(pod, now=TAKEN + 299, pull_retry_seconds=300) is None
    failure = start_failure(pod, now=TAKEN + 300, pull_retry_seconds=300)
    assert failure.reason == "ErrImagePull" and not failure.only_before_connect
    assert failure.detail.startswith("container jnlp: ErrImagePull: pull failing for 300s: "
                                     "failed to copy: httpReadSeeker")
    # not from the pod's creation: it may have waited for a node long before
    assert start_failure(pod, now=TAKEN + 250, pull_retry_seconds=300) is None


def test_a_pull_failing_for_good_fails_at_once():
    failure = start_failure(pulling("ErrImagePull", FOR_GOOD[0]), now=TAKEN + 1)
    assert failure.reason == "ErrImagePull"
    # told without the runtime's wrapping: the registry's answer, the image named in it
    assert failure.detail == f"container jnlp: ErrImagePull: {IMAGE}: not found"


@pytest.mark.parametrize("message", HOST_UNKNOWN)
def test_a_registry_host_unknown_fails_only_when_a_try_30s_later_says_it_again(message):
    """One "no such host" may be a private DNS zone's outage (its SERVFAIL hidden behind the
    original name's NXDOMAIN): the build waits for the kubelet's next tries (10 s, then 20 s
    later). The same words from a try at least 30 s after the record first kept them: a host
    that does not exist, failed then, not after the whole bound."""
    assert not image_pulls.for_good("ErrImagePull", message)
    assert image_pulls.host_unknown(message)
    pod = pulling("ErrImagePull", message)
    kept = image_pulls.told("ErrImagePull", message)
    assert start_failure(pod, now=TAKEN + 1, pull_error_at=TAKEN + 1) is None
    assert start_failure(pod, now=TAKEN + 29, pull_error_at=TAKEN + 1,
                         last_pull_error=kept) is None
    failure = start_failure(pod, now=TAKEN + 31, pull_error_at=TAKEN + 1, last_pull_error=kept)
    assert failure is not None and failure.reason == "ErrImagePull"
    assert failure.detail.endswith("regsitry.example.com on 10.96.0.10:53: no such host"
                                   if "10.96" in message else "10.0.0.2:53: no such host")
    # a back-off repeats an earlier try's error (it may be the one 10 s after the first): no
    back_off = pulling("ImagePullBackOff", f'Back-off pulling image "{IMAGE}": ErrImagePull: '
                                           + message)
    assert start_failure(back_off, now=TAKEN + 31, pull_error_at=TAKEN + 1,
                         last_pull_error=kept) is None
    # the record's time is of another error it kept (a 429 then): not this one's
    assert start_failure(pod, now=TAKEN + 31, pull_error_at=TAKEN + 1,
                         last_pull_error="ErrImagePull: 429 Too Many Requests") is None
    # a layer's CDN host unknown stays for now whatever its repeats
    layer = pulling("ErrImagePull", next(
        m for m in FOR_NOW if "failed to copy" in m and "no such host" in m))
    assert start_failure(layer, now=TAKEN + 100, pull_error_at=TAKEN + 1) is None


def test_a_bare_back_off_is_told_with_the_last_error_kept():
    pod = pulling("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"')
    failure = start_failure(pod, now=TAKEN + 400, pull_retry_seconds=300,
                            last_pull_error="ErrImagePull: 429 Too Many Requests")
    assert failure.detail == ("container jnlp: ImagePullBackOff: pull failing for 400s: "
                              "ErrImagePull: 429 Too Many Requests")
    wrapped = pulling("ImagePullBackOff", f'Back-off pulling image "{IMAGE}": ErrImagePull: '
                                          "503 Service Unavailable")
    assert "503 Service Unavailable" in start_failure(
        wrapped, now=TAKEN + 400, last_pull_error="ErrImagePull: 429").detail


def test_without_a_start_time_the_pod_s_creation_counts():
    pod = pulling("ErrImagePull", FOR_NOW[1], start=None)
    assert pod.start_time is None
    assert start_failure(pod, now=1714557600.0 + 300) is not None


# An image's own name or tag may hold a number or a word that reads like a passing failure
# (CI images are often tagged by build or pipeline number): a tag `build-503` that does not
# exist is still not found, a repository `ci/timeout-runner` still denied.
TAGGED = "registry.example.com/ci/app:build-503"
NAMED = "registry.example.com/ci/timeout-runner:429"


@pytest.mark.parametrize("message", [
    # containerd (CRI plugin, core/remotes/docker resolver.go)
    f'rpc error: code = NotFound desc = failed to pull and unpack image "{TAGGED}": failed to '
    f'resolve reference "{TAGGED}": {TAGGED}: not found',
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{NAMED}": failed to '
    f'resolve reference "{NAMED}": pull access denied, repository does not exist or may '
    'require authorization: server message: insufficient_scope: authorization failed',
    # cri-dockerd (moby distribution errors)
    f'Error response from daemon: manifest for {TAGGED} not found: manifest unknown: manifest '
    'unknown',
    # CRI-O (containers/image docker_image_src.go)
    f'initializing source docker://{TAGGED}: reading manifest build-503 in registry.example.'
    'com/ci/app: manifest unknown',
])
def test_a_number_or_word_in_the_image_s_name_does_not_make_a_missing_image_pass(message):
    assert image_pulls.for_good("ErrImagePull", message)
    assert image_pulls.for_good(
        "ImagePullBackOff", f'Back-off pulling image "{TAGGED}": ErrImagePull: {message}')


@pytest.mark.parametrize("message", [
    # CRI-O: containers/image docker_client.go
    f'initializing source docker://{TAGGED}: pinging container registry registry.example.com: '
    'invalid status code from registry 503 (Service Unavailable)',
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{TAGGED}": failed to '
    'copy: httpReadSeeker: failed open: unexpected status code https://registry.example.com/'
    'v2/ci/app/blobs/sha256:0a: 502 Bad Gateway',
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{TAGGED}": failed to '
    'resolve reference: failed to do request: Head "https://registry.example.com/v2/ci/app/'
    'manifests/build-503": net/http: request canceled (Client.Timeout exceeded while '
    'awaiting headers)',
])
def test_a_registry_s_5xx_or_time_out_still_passes_with_such_a_name(message):
    assert not image_pulls.for_good("ErrImagePull", message)


def test_the_bound_counts_from_the_first_failure_seen_when_one_was():
    pod = pulling("ErrImagePull", FOR_NOW[0])  # taken at TAKEN; first seen failing 400s on
    assert start_failure(pod, now=TAKEN + 401, pull_failing_since=TAKEN + 400) is None
    failure = start_failure(pod, now=TAKEN + 700, pull_failing_since=TAKEN + 400)
    assert "pull failing for 300s" in failure.detail


def ended_by_deadline(state):
    """The kubelet's status of a pod it ended at its activeDeadlineSeconds
    (pkg/kubelet/active_deadline.go), the container in `state`."""
    return pod_info({
        "metadata": {"name": "cia-agent", "creationTimestamp": "2024-05-01T10:00:00Z"},
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Failed", "reason": "DeadlineExceeded",
                   "message": "Pod was active on the node longer than the specified deadline",
                   "startTime": "2024-05-01T10:01:00Z", "containerStatuses": [{
                       "name": "jnlp", "ready": False, "restartCount": 0, "image": IMAGE,
                       "imageID": "", "state": state}]}})


def test_a_pod_its_deadline_ended_while_its_pull_failed_for_now_fails_with_the_pull():
    back_off = f'Back-off pulling image "{IMAGE}": ErrImagePull: {FOR_NOW[0]}'
    failure = start_failure(ended_by_deadline(
        {"waiting": {"reason": "ImagePullBackOff", "message": back_off}}), now=TAKEN + 60)
    assert failure.reason == "ImagePullBackOff" and not failure.only_before_connect
    assert failure.detail.startswith("container jnlp: ImagePullBackOff: pod DeadlineExceeded: "
                                     "ErrImagePull: failed to copy: httpReadSeeker")
    # its container's state no longer saying it: the record's last pull error tells
    reset = ended_by_deadline({"waiting": {"reason": "ContainerCreating"}})
    told = image_pulls.told("ErrImagePull", FOR_NOW[0])
    failure = start_failure(reset, last_pull_error=told)
    assert (failure.reason, failure.detail[:58]) == (
        "ErrImagePull", "pod: DeadlineExceeded: ErrImagePull: failed to copy: httpR")
    # none kept: the pod's own end, as before
    assert start_failure(reset).reason == "pod_failed"


def test_a_pod_that_ran_to_its_deadline_is_not_told_by_a_pull_error_kept_from_before():
    """Its pull failed for now once (a 429), then passed and it ran; no watch saw it run (a
    rolling upgrade's relist came after its deadline ended it), so the record kept the error.
    Its container ran and was killed at the deadline: the build's own end once its agent had
    connected, not a pull that never passed; told as the deadline, not the kill."""
    ran = ended_by_deadline({"terminated": {"reason": "Error", "exitCode": 137,
                                            "startedAt": "2024-05-01T10:02:00Z",
                                            "finishedAt": "2024-05-01T11:01:00Z"}})
    failure = start_failure(ran, last_pull_error=image_pulls.told("ErrImagePull", FOR_NOW[0]))
    assert failure.reason == "pod_failed" and failure.only_before_connect, failure
    assert failure.detail.startswith("pod: DeadlineExceeded") and "429" not in failure.detail


# A layer's GET redirected to a presigned URL, which containerd's error names as it followed
# it (core/remotes/docker/fetcher.go "failed to do request"; Go's url.Error quotes the URL):
# the text of docker/for-win#14702, an R2 bucket behind Docker Hub. Its signature lets anyone
# who reads it fetch the layer until it expires (X-Amz-Expires).
SIGNATURE = "a11d92798af1b2af916563b131eefd5cdc44aec98d03d7d2f661acb21a32072b"
CREDENTIAL = "f1baa2dd9b876aeb89efebbfc9e5d5f4%2F20250925%2Fauto%2Fs3%2Faws4_request"
PRESIGNED = (
    'https://docker-images-prod.r2.cloudflarestorage.com/registry-v2/docker/registry/v2/blobs/'
    'sha256/6d/6d79/data?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=' + CREDENTIAL
    + '&X-Amz-Date=20250925T031140Z&X-Amz-Expires=1200&X-Amz-SignedHeaders=host'
    '&X-Amz-Signature=' + SIGNATURE)


@pytest.mark.parametrize("message", [
    PULL + f'failed to copy: httpReadSeeker: failed open: failed to do request: Get '
           f'"{PRESIGNED}": dial tcp: lookup docker-images-prod.r2.cloudflarestorage.com on '
           '10.0.0.2:53: no such host',
    PULL + f'failed to copy: httpReadSeeker: failed open: unexpected status code {PRESIGNED}: '
           '403 Forbidden',
])
def test_a_presigned_layer_url_s_signature_is_not_told(message):
    failure = start_failure(pulling("ErrImagePull", message), now=TAKEN + 1000,
                            pull_retry_seconds=300)
    assert failure is not None and "docker-images-prod" in failure.detail
    assert SIGNATURE not in failure.detail and CREDENTIAL[:12] not in failure.detail
    # as the build's record and the status page keep a pull failing for now (agent_starts.pulls)
    assert SIGNATURE not in redact(image_pulls.told("ErrImagePull", message))

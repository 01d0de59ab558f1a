"""Image pulls that fail: for good (fail the build at once) or for now (the kubelet retries).

The kubelet retries a failed pull with back-off (10s doubling to 5 min: pkg/kubelet/kubelet.go
imageBackOffPeriod, MaxImageBackOff), the container waiting ErrImagePull after a try and
ImagePullBackOff between tries (pkg/kubelet/images/image_manager.go pullImage). A registry's
429 ("toomanyrequests: You have reached your pull rate limit"), its 5xx, or a network time-out
passes on one of the next tries; a name that does not exist, credentials the registry
refuses, never does; nor a registry host the DNS does not know, when a later try says so
again (host_unknown_again). So a failed pull fails its build at once only when its message
says it is for good (or its host unknown again); otherwise the build's pod is left to the
kubelet and fails PULL_RETRY_SECONDS after a watch first saw it fail (PULL_SINCE_FIELD; not
seen: from status.startTime), with the kubelet's last message.

The waiting message is the container runtime's error (containerd, through CRI: "rpc error:
code = Unknown desc = failed to pull and unpack image \"...\": failed to resolve reference
\"...\": ...: not found", "... pull access denied, repository does not exist or may require
authorization ...", "... unexpected status from HEAD request to ...: 401 Unauthorized", "...
unexpected status code ...: 429 Too Many Requests", "... dial tcp ...: i/o timeout";
containerd core/remotes/docker resolver.go and fetcher.go). From Kubernetes 1.32 the
back-off's message carries it too ('Back-off pulling image "X": ErrImagePull: <error>': the
kubelet's prevPullErrMsg); before, it is 'Back-off pulling image "X"' alone, which says
nothing: taken as for now (the ErrImagePull before it told, and the watch saw it). Pure.
"""

import re

from workers.core.ports import ContainerPhase, ContainerState, PodInfo

# The kubelet's waiting reasons of a failed pull (pkg/kubelet/images/types.go ErrImagePull,
# ErrImagePullBackOff; cri-api pkg/errors ErrRegistryUnavailable, which evalCRIPullErr in
# image_manager.go gives as the reason when the runtime's error starts with it). Only those
# configured as fatal (CI_AUTOSCALER_FATAL_WAITING_REASONS) fail a build at all.
PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"})
# How long a pull failing for now is left to the kubelet's retries, from the kubelet taking
# the pod (CI_AUTOSCALER_IMAGE_PULL_RETRY_SECONDS): the back-off reaches its 5 min cap after
# five tries, and a registry's rate-limit window (Docker Hub's) is counted in minutes.
PULL_RETRY_SECONDS = 300.0

# The build record's fields while its pod's pull fails for now (workers.agent_starts.pulls):
# "<reason>: <the kubelet's message>", and the pod it is of.
PULL_ERROR_FIELD = "pull_error"
PULL_AGENT_FIELD = "pull_error_agent"
# When a watch first saw that pod's pull fail for now: the bound counts from there. From
# status.startTime, a pull that came late (after init containers that ran for minutes, or
# behind other pods' pulls: the kubelet pulls one image at a time by default,
# serializeImagePulls) failed its build at its first 429, as before the bound.
PULL_SINCE_FIELD = "pull_error_since"

# Words of a failure that passes (checked first: a 503's body may name a missing thing):
# rate limits, a registry's 5xx, the network. Never a bare number or a word an image's name
# may hold (a tag `build-503`, a repository `ci/timeout-runner`, both named in a "not found"):
# a status code only as a status line writes it, its text after it ("503 Service
# Unavailable": containerd's resp.Status, CRI-O's "registry 503 (Service Unavailable)"), and
# "timeout" only as a word of its own ("i/o timeout", "Client.Timeout exceeded").
_FOR_NOW = re.compile(
    r"(?i)toomanyrequests|too many requests|internal server error|"
    r"bad gateway|service unavailable|gateway time-?out|timed out|"
    r"(?<![\w./:-])timeout(?![\w./:-])|timeout exceeded|"
    r"connection (?:reset|refused)|temporary failure|server misbehaving|unexpected EOF|"
    r"TLS handshake|registry is unavailable")
_STATUS_FOR_NOW = re.compile(r"\b(?:429|5\d\d) \(?[A-Z]")
# A host the DNS does not know while a layer is fetched ("failed to copy": containerd
# fetcher.go, after the manifest was read from the registry's host, which resolved then): the
# CDN or storage bucket the registry redirected the layer to (Docker Hub's
# production.cloudflare.docker.com, an S3 bucket), not a typo in the image's host. Its DNS
# failing is not the build's to fix, and the kubelet's next try may pass: for now.
_LAYER_HOST_UNKNOWN = re.compile(r"failed to copy: .*: no such host")
# A registry's token service refusing a request that offered no credentials (containerd
# core/remotes/docker/authorizer.go doBearerAuth: "failed to fetch anonymous token: %w"
# around remotes/errors ErrUnexpectedStatus, "unexpected status from GET request to <url>:
# 401 Unauthorized"; before containerd 2.0 "unexpected status: 401 Unauthorized"). No
# credentials were refused: the token service of a registry that serves anonymous pulls
# failing (an outage of Docker Hub's auth.docker.io answers so), for now. A registry that
# wants credentials the pod does not give answers the same: that build fails after the
# bound, with these words. With credentials ("failed to fetch oauth token": containerd
# tries the POST, then the GET, with them) a 401 is those credentials refused: for good.
_ANONYMOUS_TOKEN_REFUSED = re.compile(
    r"failed to fetch anonymous token: unexpected status(?: from \w+ request to \S+)?: 401\b")
# A registry host that the DNS says does not exist. Go's resolver writes "lookup <host> on
# <server>: no such host" for NXDOMAIN or no address (net/dnsclient_unix.go errNoSuchHost,
# DNSError.IsNotFound; the cgo resolver too, for EAI_NONAME), under containerd's 'failed to
# do request: Head "https://<host>/v2/...": dial tcp: ' (resolver.go) or CRI-O's "pinging
# container registry <host>: ". A typo in the image's host, most often; but not only: with
# search domains (a cluster's ndots:5) Go's resolver returns the original name's NXDOMAIN
# over a search-domain's SERVFAIL (net/dnsclient_unix.go goLookupIPCNAMEOrder, "Prefer error
# for original name"), so a private DNS zone's outage reads "no such host" too. So it fails
# a build only once the same words come from a later try of the kubelet's, at least
# HOST_UNKNOWN_CONFIRM_SECONDS after the build's record first kept them (host_unknown_again):
# the kubelet's back-off (10 s doubling, pkg/kubelet/kubelet.go imageBackOffPeriod) tries
# again 10 s and 30 s after the first try, well within PULL_RETRY_SECONDS. Left to the whole
# bound, a typo's build waited 300 s for nothing; failed at once, a DNS outage of seconds
# failed every build that pulled meanwhile.
_HOST_UNKNOWN = re.compile(r": no such host")
HOST_UNKNOWN_CONFIRM_SECONDS = 30.0
# When the build's record first kept the error it keeps now (PULL_ERROR_FIELD; set anew when
# that error changes): a registry host unknown twice that far apart fails the build.
PULL_ERROR_AT_FIELD = "pull_error_at"
# Words of a failure for good (containerd's and the registry's, OCI distribution-spec error
# codes): a name or tag not found, credentials refused or missing. A resolver that is down or
# failing answers otherwise: "server misbehaving" (SERVFAIL), "i/o timeout", "connection
# refused", "Temporary failure in name resolution" (EAI_AGAIN): those are for now (_FOR_NOW).
_FOR_GOOD = re.compile(
    r"(?i)not found|manifest unknown|name unknown|unauthorized|authentication required|"
    r"access denied|denied:|requested access to the resource is denied|forbidden|"
    r"invalid reference format|repository does not exist")


def for_good(reason: str, message: str) -> bool:
    """Whether this failed pull can never pass by retrying it (fail the build now). A reason
    that is no pull's (InvalidImageName, CreateContainerConfigError) is always for good."""
    if reason not in PULL_REASONS:
        return True
    if reason == "RegistryUnavailable" or _FOR_NOW.search(message) \
            or _STATUS_FOR_NOW.search(message) or _ANONYMOUS_TOKEN_REFUSED.search(message) \
            or _LAYER_HOST_UNKNOWN.search(message) or host_unknown(message):
        return False
    return bool(_FOR_GOOD.search(message))


def host_unknown(message: str) -> bool:
    """Whether the pull failed on the registry's own host being unknown to the DNS (not a
    layer's CDN host: _LAYER_HOST_UNKNOWN, for now whatever comes of it)."""
    return bool(_HOST_UNKNOWN.search(message)) and not _LAYER_HOST_UNKNOWN.search(message)


def host_unknown_again(reason: str, message: str, kept_at: float | None,
                       now: float | None) -> bool:
    """Whether a try of the kubelet's (ErrImagePull: written right after a try; a back-off
    repeats an earlier try's error) found the registry's host unknown again, at least
    HOST_UNKNOWN_CONFIRM_SECONDS after the build's record first kept that same error
    (`kept_at`: PULL_ERROR_AT_FIELD, given only when the record's error is this one)."""
    return reason == "ErrImagePull" and host_unknown(message) and kept_at is not None \
        and now is not None and now - kept_at >= HOST_UNKNOWN_CONFIRM_SECONDS


def failing_since(pod: PodInfo, noted: float | None = None) -> float | None:
    """Since when the pod's pull has failed: when a watch first saw it (`noted`:
    PULL_SINCE_FIELD), else, not seen (no worker watched then), since the kubelet has had the
    pod (status.startTime: set once, when it first writes the pod's status:
    pkg/kubelet/status/status_manager.go updateStatusInternal), or, not told, since the pod
    was made."""
    return noted or pod.start_time or pod.created_at


def pulling_again(pod: PodInfo, fatal: frozenset[str]) -> ContainerState | None:
    """The first container whose image pull failed for now (the kubelet retries it)."""
    for c in pod.containers:
        if c.phase == ContainerPhase.WAITING and c.reason in fatal \
                and not for_good(c.reason, c.message):
            return c
    return None


# The CRI and containerd wrapping around the registry's answer (the image is named in what
# is left: the reference's "<image>: not found", the registry URL of a 429).
_WRAPPING = re.compile(r'rpc error: code = \w+ desc = |failed to pull and unpack image "[^"]*": |'
                       r'failed to resolve reference "[^"]*": ')


def short(message: str) -> str:
    """The kubelet's message without the runtime's wrapping: the registry's answer comes at
    the end of a long text, cut from a build's error and commit status otherwise."""
    return _WRAPPING.sub("", message)


# The back-off's wrapping of the try's error before it (Kubernetes 1.32 and later).
_BACK_OFF = re.compile(r'Back-off pulling image "[^"]*": (?=\w+: )')


def told(reason: str, message: str) -> str:
    """'<reason>: <error>' as a build's record keeps it. The back-off after a try carries
    that try's error ('Back-off pulling image "X": ErrImagePull: <error>'): told as the try
    was, so the kubelet's alternating between the two is one error, not two per try."""
    wrapped = _BACK_OFF.match(message)
    if wrapped:
        return short(message[wrapped.end():])
    return f"{reason}: {short(message)}"


def bare(message: str) -> bool:
    """Whether a back-off message names no error (a kubelet before 1.32)."""
    return message.startswith("Back-off pulling image") and '": ' not in message

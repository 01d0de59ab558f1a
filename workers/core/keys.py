"""Deterministic build keys and agent names: the same event always maps to the same key, so
a retried or duplicated event never makes a second pod or a second build.

A commit has one key (source, project, ref, sha); each run of it, one delivery that built it,
has a key of its own (the commit's key and the delivery id), so a commit pushed again after its
build finished gets a new agent, pod and Jenkins build, while the old run's pod (kept for
debugging) and Jenkins build (whose parameters carry the old key) stay as they were.

Agent names are what two installations sharing one Jenkins could clash on (both get the same
push, or catch up the same missed head, and compute the same key). An installation with an
identity (settings `installation`) mixes it into the name's hash and appends a tag of it, so
the two never give the same name, and a name alone tells whether this installation gave it
(a Replay of another's build asks for an agent that is not ours to remake).
"""

import hashlib
import re

AGENT_PREFIX = "cia"
# A build's record field: the agent names it had before its current one, comma-separated (a
# build placed again gets a new name: workers.engine.agent_names).
PREVIOUS_AGENTS = "previous_agents"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_JOB_SLUG_MAX = 32
_HASH_CHARS = 20
_AGENT_HASH_CHARS = 12
_TAG_CHARS = 6  # an installation's tag after the hash: 1 in 16 million passes another's
_AGENT_TAIL = re.compile(rf"^[0-9a-f]{{{_AGENT_HASH_CHARS}}}(?:[0-9a-f]{{{_TAG_CHARS}}})?$")


def build_key(*parts: str) -> str:
    """A short stable key for a build, from (source, project, ref, sha) or (source, job, queue id)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return digest[:_HASH_CHARS]


def commit_key(source: str, project: str, ref: str, sha: str) -> str:
    """The key of a commit pushed to a ref, the same for every run of it. The project path in
    any case is one project (GitLab: Routable.find_by_full_path), and the webhook ("Team/App",
    as created) and the catch-up (a route's "team/app") must give one key for one push."""
    return build_key(source, project.lower(), ref, sha)


def cased_commit_key(source: str, project: str, ref: str, sha: str) -> str:
    """The commit key as versions before one key per project path in any case gave it: the
    path as spelt. A run mark written under it (a push taken just before an upgrade, and
    kept for build_ttl) still says that push was built."""
    return build_key(source, project, ref, sha)


def run_key(commit_key: str, delivery_id: str) -> str:
    """The key of the run of a commit that this delivery started: the same delivery always
    gives the same run (a redelivery is recognised), another delivery another run."""
    return build_key("run", commit_key, delivery_id)


def delivery_run(delivery_id: str, received_at: float, window_seconds: int) -> str:
    """The delivery as its run's key takes it (run_key): with the dedupe window it came in.
    Within its window a redelivery is recognised by its delivery mark, and answered with the
    run that mark names, whatever it would make of the key; one after the window (GitLab's
    "Resend", which reuses the id, a week later) is a new run, and must not get the old run's
    key: the old run's state, its release's dedupe mark (set at its end, so it outlives the
    delivery's) and its kept pod may all still be there under that key and agent name, and
    the new run's COMPLETED was taken for the old one's (its agent never released). A
    delivery received `window_seconds` or more after another is in a later window (in whole
    seconds: no float division to round two windows into one)."""
    return f"{delivery_id}\0{int(received_at) // window_seconds}"


def _slug(job: str) -> str:
    return _NOT_DNS.sub("-", job.lower()).strip("-")[:_JOB_SLUG_MAX].strip("-") or "job"


def agent_name(job: str, key: str, installation: str = "") -> str:
    """Pod name, Jenkins node name and agent label at once: a DNS-1123 label of at most 63
    characters that still tells a person which job it is for. Without an installation
    identity, the name every version before it gave (cia-<job>-<12 hex of the key>)."""
    if not installation:
        return f"{AGENT_PREFIX}-{_slug(job)}-{key[:_AGENT_HASH_CHARS]}"
    digest = build_key("agent", installation, key)[:_AGENT_HASH_CHARS]
    return f"{AGENT_PREFIX}-{_slug(job)}-{digest}{_tag(installation, digest)}"


def _tag(installation: str, digest: str) -> str:
    return build_key("installation", installation, digest)[:_TAG_CHARS]


def is_agent_name_of(label: str, job: str) -> bool:
    """Whether `label` is a name `agent_name` gives an agent of `job`, in any installation
    (e.g. the label a Jenkins Replay of one of our builds still asks for, long after that
    agent is gone)."""
    return _tail(label, job) is not None


def is_own_agent_name(label: str, job: str, installation: str) -> bool:
    """Whether `label` is a name `agent_name` gives an agent of `job` in this installation:
    its tag matches, or, without an identity, it has none."""
    tail = _tail(label, job)
    if tail is None:
        return False
    digest = tail[:_AGENT_HASH_CHARS]
    return tail == digest + (_tag(installation, digest) if installation else "")


def _tail(label: str, job: str) -> str | None:
    prefix = f"{AGENT_PREFIX}-{_slug(job)}-"
    tail = label[len(prefix):]
    return tail if label.startswith(prefix) and _AGENT_TAIL.fullmatch(tail) else None

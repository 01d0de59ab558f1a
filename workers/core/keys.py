"""Deterministic build keys and agent names: the same event always maps to the same key, so
a retried or duplicated event never makes a second pod or a second build.

A commit has one key (source, project, ref, sha); each run of it, one delivery that built it,
has a key of its own (the commit's key and the delivery id), so a commit pushed again after its
build finished gets a new agent, pod and Jenkins build, while the old run's pod (kept for
debugging) and Jenkins build (whose parameters carry the old key) stay as they were.
"""

import hashlib
import re

AGENT_PREFIX = "cia"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_JOB_SLUG_MAX = 32
_HASH_CHARS = 20
_AGENT_HASH_CHARS = 12
_AGENT_TAIL = re.compile(rf"^[0-9a-f]{{{_AGENT_HASH_CHARS}}}$")


def build_key(*parts: str) -> str:
    """A short stable key for a build, from (source, project, ref, sha) or (source, job, queue id)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return digest[:_HASH_CHARS]


def commit_key(source: str, project: str, ref: str, sha: str) -> str:
    """The key of a commit pushed to a ref, the same for every run of it."""
    return build_key(source, project, ref, sha)


def run_key(commit_key: str, delivery_id: str) -> str:
    """The key of the run of a commit that this delivery started: the same delivery always
    gives the same run (a redelivery is recognised), another delivery another run."""
    return build_key("run", commit_key, delivery_id)


def _slug(job: str) -> str:
    return _NOT_DNS.sub("-", job.lower()).strip("-")[:_JOB_SLUG_MAX].strip("-") or "job"


def agent_name(job: str, key: str) -> str:
    """Pod name, Jenkins node name and agent label at once: a DNS-1123 label of at most 63
    characters that still tells a person which job it is for."""
    return f"{AGENT_PREFIX}-{_slug(job)}-{key[:_AGENT_HASH_CHARS]}"


def is_agent_name_of(label: str, job: str) -> bool:
    """Whether `label` is a name `agent_name` gives an agent of `job` (e.g. the label a Jenkins
    Replay of one of our builds still asks for, long after that agent is gone)."""
    prefix = f"{AGENT_PREFIX}-{_slug(job)}-"
    return label.startswith(prefix) and bool(_AGENT_TAIL.match(label[len(prefix):]))

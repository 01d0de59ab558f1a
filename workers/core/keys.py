"""Deterministic build keys and agent names: the same event always maps to the same key, so
a retried or duplicated event never makes a second pod or a second build."""

import hashlib
import re

AGENT_PREFIX = "cia"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_JOB_SLUG_MAX = 32
_HASH_CHARS = 20


def build_key(*parts: str) -> str:
    """A short stable key for a build, from (source, project, ref, sha) or (source, job, queue id)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return digest[:_HASH_CHARS]


def agent_name(job: str, key: str) -> str:
    """Pod name, Jenkins node name and agent label at once: a DNS-1123 label of at most 63
    characters that still tells a person which job it is for."""
    slug = _NOT_DNS.sub("-", job.lower()).strip("-")[:_JOB_SLUG_MAX].strip("-") or "job"
    return f"{AGENT_PREFIX}-{slug}-{key[:12]}"

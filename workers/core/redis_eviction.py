"""Redis's maxmemory-policy, judged. At maxmemory, `noeviction` refuses writes (the chart's
Redis runs with it); every other policy deletes keys to make room, without a word to the
client: `allkeys-*` any key, `volatile-*` keys that have a TTL (redis.io, "Key eviction").
Managed Redis services default to `volatile-lru` (ElastiCache, Memorystore, Azure Cache for
Redis). What that costs us is said in one line, the same for `check-config --live`, the
start-up warnings of the web, the worker and the reconcile loop, and the runbook."""

NOEVICTION = "noeviction"
WHERE_TO_READ = "README: Install on a cluster, Redis memory"

# What each kind of policy may delete of ours (workers.adapters.redis_state, .intake, .lease).
_ANY_KEY = ("any key, ours among them: build records, claims, leases and RQ jobs (agent pods "
            "and Jenkins agents orphaned, builds never released) and delivery marks (a resent "
            "delivery built twice)")
_TTL_KEYS = ("keys that have a TTL, ours among them: delivery and commit marks (a resent "
             "delivery or a pushed commit built twice), leases and workers' heartbeats (work "
             "taken over while its holder still does it)")


def evicts(policy: str) -> bool:
    """Whether Redis deletes keys at maxmemory under `policy` (INFO maxmemory_policy): every
    policy but noeviction, whatever maxmemory is now (a limit set later starts it at once)."""
    return policy != NOEVICTION


def problem(policy: str) -> str | None:
    """The line that says what `policy` risks and what to set instead; None for noeviction."""
    if not evicts(policy):
        return None
    deleted = _TTL_KEYS if policy.startswith("volatile-") else _ANY_KEY
    return (f"Redis: maxmemory-policy {policy} evicts: at maxmemory Redis deletes {deleted}; "
            f"set maxmemory-policy {NOEVICTION} ({WHERE_TO_READ})")


FINE = f"Redis evicts no key (maxmemory-policy {NOEVICTION})"

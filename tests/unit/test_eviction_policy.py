"""Redis's maxmemory-policy judged (workers.core.redis_eviction): every policy Redis 7 knows
but noeviction deletes keys at maxmemory (redis.io, "Key eviction"), and the line that says so
names the policy, what it may delete of ours, and what to set."""

import pytest

from workers.core.redis_eviction import evicts, problem

# redis.conf's maxmemory-policy values (Redis 7.0)
EVICTING = ("volatile-lru", "allkeys-lru", "volatile-lfu", "allkeys-lfu", "volatile-random",
            "allkeys-random", "volatile-ttl")


@pytest.mark.parametrize("policy", EVICTING)
def test_every_policy_but_noeviction_evicts_and_is_a_problem(policy):
    assert evicts(policy)
    line = problem(policy)
    assert line.startswith(f"Redis: maxmemory-policy {policy} evicts: at maxmemory Redis "
                           "deletes ")
    assert line.endswith("; set maxmemory-policy noeviction (README: Install on a cluster, "
                         "Redis memory)")


def test_noeviction_is_no_problem():
    assert not evicts("noeviction")
    assert problem("noeviction") is None


def test_a_volatile_policy_is_said_to_delete_the_keys_with_a_ttl_and_which_of_ours():
    assert "deletes keys that have a TTL, ours among them: delivery and commit marks" in \
        problem("volatile-lru")
    assert "deletes any key, ours among them: build records" in problem("allkeys-lfu")

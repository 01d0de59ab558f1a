"""The set of builds Jenkins refuses (workers.adapters.refused_builds), on a real
redis-server: it stays small through a long outage (a build's each refusal notes it again;
one not refused for RECENT_SECONDS is dropped by the next note) and goes by itself once no
build is refused. Without the prune and the expiry, every build ever refused stayed in Redis."""

from workers.adapters import refused_builds
from workers.adapters.redis_state import RedisState

WINDOW = refused_builds.RECENT_SECONDS


def test_a_long_outage_keeps_only_the_builds_refused_lately_and_the_set_expires(redis_conn):
    state = RedisState(redis_conn, prefix="rb:")
    key = state.prefix + refused_builds.KEY
    # An hour's outage: 300 builds, each refused once, one every 12 s.
    for n in range(300):
        refused_builds.note(state, f"b{n}", n * 12.0)
    last = 299 * 12.0
    lately = [f"b{n}" for n in range(300) if n * 12.0 > last - WINDOW]
    assert redis_conn.zrange(key, 0, -1) == [k.encode() for k in lately]  # 75, not 300
    assert 0 < redis_conn.ttl(key) <= WINDOW  # no refusal for 15 minutes: gone
    # The page reads at most SHOWN of them, the refused within the window, oldest first.
    shown = refused_builds.recent(state, last)
    assert len(shown) == refused_builds.SHOWN
    assert shown == lately[:refused_builds.SHOWN]
    assert refused_builds.recent(state, last + WINDOW + 1) == []

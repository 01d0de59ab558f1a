"""The service's sentinel ACL user (REDIS_SENTINEL_USERNAME), beyond test_sentinel_auth.py:
the setting is checked at start-up, your own sentinels' user reaches every process, the
passwords the chart writes into sentinel.conf cannot break it, and on real processes
(Debian's redis-server and redis-sentinel 7.0, tests/support/sentinel.py, started with the
`requirepass` and `user` lines of the chart's sentinel.conf) the chart's user may change
nothing, while the web stores pushes through the sentinels as that user across a failover."""

import pytest

from tests.support.sentinel import MASTER_NAME
from workers.config import Settings, load_settings
from workers.core.errors import ConfigError

SECRET = "s3cret-value-never-shown"


@pytest.mark.parametrize("username, password, problem", [
    ("ci-autoscaler", None, "requires REDIS_SENTINEL_PASSWORD"),
    (f"two {SECRET}", SECRET, "no white space")])
def test_a_sentinel_user_without_a_password_or_with_white_space_is_refused_by_name(
        monkeypatch, username, password, problem):
    """Without a password redis-py logs in as `default`: the user was silently unused, and
    every connect refused (WRONGPASS) only once the web took traffic."""
    monkeypatch.setenv("REDIS_SENTINELS", "127.0.0.1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", MASTER_NAME)
    monkeypatch.setenv("REDIS_SENTINEL_USERNAME", username)
    if password is None:
        monkeypatch.delenv("REDIS_SENTINEL_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", password)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(p.startswith("REDIS_SENTINEL_USERNAME: ") and problem in p
               for p in err.value.problems), err.value.problems
    assert SECRET not in str(err.value.problems)
    assert Settings(redis_sentinels="127.0.0.1:26379", redis_sentinel_master=MASTER_NAME,
                    redis_sentinel_username="ci-autoscaler",
                    redis_sentinel_password="p").redis_sentinel_username == "ci-autoscaler"

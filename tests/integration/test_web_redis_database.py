"""A REDIS_URL naming a database Redis does not have (/16 with Redis' default `databases 16`)
is refused by Redis at every connection's SELECT (`ERR DB index is out of range`): every push
goes to the spool until the setting is fixed. The web's start-up check (gunicorn's master,
service.startup.warn_if_evicting) says so, once, as a warning in Redis' words, as it does a
refused password; it read "Redis's maxmemory-policy not checked", reason "INFO refused", at
info. Real redis-server (tests.support.redis_server)."""

import logging
from urllib.parse import urlparse

from service import startup
from workers.checks import redis_eviction


def test_a_redis_url_naming_a_database_redis_has_not_is_a_warning_in_redis_words(
        redis_url, monkeypatch, caplog):
    url = urlparse(redis_url)
    assert url.password is None  # the session's server: nothing to hide in the URL
    monkeypatch.delenv("REDIS_SENTINELS", raising=False)
    monkeypatch.setenv("REDIS_URL", url._replace(path="/16").geturl())  # databases 16: 0-15
    caplog.set_level(logging.INFO)

    startup.warn_if_evicting()

    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.getMessage() == ("Redis refuses what REDIS_URL asks of it: pushes go to "
                                    "the spool until it is fixed")
    assert warning.error == "DB index is out of range"  # Redis' own words
    assert not [r for r in caplog.records if r.getMessage() == redis_eviction.NOT_CHECKED]

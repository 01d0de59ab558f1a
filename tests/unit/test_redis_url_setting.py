"""REDIS_URL is checked when the settings load, as every other setting is: a malformed one is
refused naming the variable, never showing its value (it may hold Redis's password)."""

import pytest

from workers.config.settings import load_settings
from workers.core.errors import ConfigError


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0", "rediss://:s3cret@redis.example.com:6380/2",
    "redis://default:p%2Fss@redis:6379", "unix:///run/redis/redis.sock?db=1", "redis://redis",
    # redis-py's own forms of a database: the query's db before the path, and what int() takes
    "redis://redis:6379/?db=2", "redis://redis:6379/db?db=2", "redis://redis/+1",
    "redis://redis/%31",
])
def test_a_redis_url_redis_py_takes_is_taken(monkeypatch, url):
    monkeypatch.setenv("REDIS_URL", url)
    assert load_settings().redis_url == url


@pytest.mark.parametrize("url, reason", [
    ("127.0.0.1:6379", "must start with redis://, rediss:// or unix://"),  # host:port only
    ("redis//redis:6379/0", "must start with redis://, rediss:// or unix://"),
    # An unencoded "/" in the password: the rest reads as a port that is no number.
    ("redis://:pa/ss-w0rd-9f2@redis:6379/0", "cannot be read"),
    ("redis://redis:63x79/0", "cannot be read"),
    # redis-py reads a path that is no number as database 0, silently
    ("redis://:ss-w0rd@redis:6379/l", "the database after host[:port]/ must be a number"),
    ("redis://redis:6379/ci", "the database after host[:port]/ must be a number"),
    # a digit to str.isdigit(), no number to int(): redis-py used database 0
    ("redis://redis:6379/%C2%B2", "the database after host[:port]/ must be a number"),
    ("redis://redis:6379/-1", "the database after host[:port]/ must be a number"),
])
def test_a_malformed_redis_url_is_refused_naming_the_variable_not_its_value(
        monkeypatch, url, reason):
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    [problem] = err.value.problems
    assert problem.startswith("REDIS_URL: ") and reason in problem
    assert "ss-w0rd" not in problem and "63x79" not in problem


def test_a_redis_url_read_from_a_file_with_its_newline_is_the_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:pw@redis:6379\n")  # an existingSecret's key
    assert load_settings().redis_url == "redis://:pw@redis:6379"

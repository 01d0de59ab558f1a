"""A refused setting is named, never quoted (workers.config.settings): a URL setting carries
no user:password@ (it would go into every agent pod's environment and into the libraries'
error texts), and pydantic's ValidationError, wherever Settings is made, quotes no input (its
`input_value=`, for a model-wide check the whole environment read)."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from workers.config.settings import Settings, load_settings
from workers.core.errors import ConfigError

SECRET = "Sup3r-s3cret"


@pytest.mark.parametrize("name, field", [
    ("JENKINS_URL", "jenkins_url"), ("JENKINS_AGENT_URL", "jenkins_agent_url"),
    ("JENKINS_PUBLIC_URL", "jenkins_public_url"), ("GITLAB_URL", "gitlab_url")])
def test_a_url_setting_with_credentials_is_refused_by_name(monkeypatch, name, field):
    monkeypatch.setenv(name, f"https://ci:{SECRET}@host.example.com/ci/")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert name in problem and "user:password@" in problem and SECRET not in problem


@pytest.mark.parametrize("sentinels", [
    f"redis://:{SECRET}@s-1.example:26379",  # the Redis URL's form, password and all
    f"s-1.example:26379,sentinel:{SECRET}@s-2.example:26379",  # user:password@ host:port
    # a comma in the password: the item before it ("sentinel:<start of password>") was quoted
    f"s-1.example:26379,sentinel:{SECRET},x@s-2.example:26379",
])
def test_sentinels_given_with_their_password_are_refused_without_it(monkeypatch, sentinels):
    """REDIS_SENTINELS written as REDIS_URL is (a URL with the sentinels' password): the refusal
    quoted each item that was not host:port, the password with it, into the pod's log."""
    monkeypatch.setenv("REDIS_SENTINELS", sentinels)
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "cia-master")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem.startswith("REDIS_SENTINELS: ") and "host:port" in problem, problem
    assert "REDIS_SENTINEL_PASSWORD" in problem and SECRET not in problem, problem


def test_a_url_setting_without_credentials_is_taken_with_an_at_past_its_host(monkeypatch):
    monkeypatch.setenv("JENKINS_URL", "https://jenkins.example.com/view/a@b/")
    assert load_settings().jenkins_url == "https://jenkins.example.com/view/a@b/"


@pytest.mark.parametrize("env", [
    {"REDIS_URL": f"redis://:{SECRET}/x@redis.example.com:6379/0"},  # the field's own check
    {"REDIS_URL": f"redis://:{SECRET}@redis.example.com:6379/0",      # a model-wide check
     "JENKINS_API_TOKEN": SECRET + "-token", "REDIS_SENTINELS": "s-1.example:26379"},
])
def test_a_validation_error_quotes_no_value(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    # pydantic cuts a long input_value in its middle: whether the secret shows is luck
    assert "input_value" not in str(refused.value) and SECRET not in str(refused.value)


def test_the_demo_refuses_a_bad_redis_url_by_name_without_its_password():
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "demo"], capture_output=True, text=True,
        env={**os.environ, "REDIS_URL": f"redis://:{SECRET}/x@127.0.0.1:1/0"}, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: REDIS_URL: cannot be read as a Redis URL")
    assert SECRET not in result.stderr and "Traceback" not in result.stderr


def test_the_settings_repr_shows_no_redis_password(monkeypatch):
    """The SecretStr settings show as '**********'; REDIS_URL is a plain str (the chart's
    `redis://:$(REDIS_PASSWORD)@host`), and showed its password whole in any repr."""
    monkeypatch.setenv("REDIS_URL", f"redis://ci:{SECRET}@redis.example.com:6379/0")
    settings = load_settings()
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert "redis.example.com:6379/0" in repr(settings)
    assert settings.redis_url == f"redis://ci:{SECRET}@redis.example.com:6379/0"  # as given


def test_commit_statuses_blank_the_sentinel_password_too(monkeypatch):
    """The GitLab sender's list of secrets was a hand-kept five tokens, without
    REDIS_SENTINEL_PASSWORD, which the status page (every SecretStr setting) blanked."""
    from workers.commit_statuses.sender import secrets_of
    from workers.core.commit_status import description
    monkeypatch.setenv("REDIS_SENTINELS", "s-1.example:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "cia-master")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", SECRET)
    monkeypatch.setenv("JENKINS_API_TOKEN", "jenkins-" + SECRET)
    shown = description(f"agent could not start: auth {SECRET} refused",
                        secrets_of(load_settings()))
    assert SECRET not in shown and "[redacted]" in shown

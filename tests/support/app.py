"""Build the web app on a real Redis, as gunicorn would, with test tokens."""

import pytest

from service.app import create_app
from tests.support.payloads import EXAMPLE_CONFIG
from workers.config import Settings, load_file_config

GITLAB_TOKEN = "gitlab-test-token-4f1c9a"
JENKINS_TOKEN = "jenkins-test-token-7b2e11"


def make_settings(redis_url: str, **overrides) -> Settings:
    values = dict(redis_url=redis_url, gitlab_webhook_token=GITLAB_TOKEN,
                  jenkins_webhook_token=JENKINS_TOKEN, config_path=str(EXAMPLE_CONFIG))
    return Settings(**(values | overrides))


def make_app(redis_url: str, **overrides):
    settings = make_settings(redis_url, **overrides)
    return create_app(settings, file_config=load_file_config(EXAMPLE_CONFIG))


@pytest.fixture
def app(redis_url):
    return make_app(redis_url)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def queue(app):
    return app.extensions["ci_autoscaler"].state.queue

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


def production_env(monkeypatch, *, redis_url: str, kube, jenkins_fake, config, namespace: str,
                   **extra: str) -> None:
    """Configure the process as production is: everything from environment variables, the
    cluster from a kubeconfig, Jenkins over HTTP."""
    values = {
        "REDIS_URL": redis_url, "KUBECONFIG": str(kube.kubeconfig_path),
        "AGENT_NAMESPACE": namespace, "CI_AUTOSCALER_CONFIG": str(config),
        "JENKINS_URL": jenkins_fake.url, "JENKINS_USER": jenkins_fake.user,
        "JENKINS_API_TOKEN": jenkins_fake.token, "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
        "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN, **extra}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

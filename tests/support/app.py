"""Build the web app on a real Redis, as gunicorn would, with test tokens."""

import atexit
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from rq import SimpleWorker

from service.app import create_app
from tests.support.payloads import EXAMPLE_CONFIG
from workers import runtime
from workers.config.config_file import load_file_config
from workers.config.settings import Settings
from workers.engine.intake import Mover
from workers.adapters.redis_state import SERIALIZER

GITLAB_TOKEN = "gitlab-test-token-4f1c9a"
JENKINS_TOKEN = "jenkins-test-token-7b2e11"


def spool_dir() -> str:
    """A spool directory of the caller's own: no two apps of the suite share one (the default
    is the same for every app of one user, installation and Redis); removed when the test
    process exits."""
    directory = tempfile.mkdtemp(prefix="cia-spool-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def make_settings(redis_url: str, **overrides) -> Settings:
    values = dict(redis_url=redis_url, gitlab_webhook_token=GITLAB_TOKEN,
                  jenkins_webhook_token=JENKINS_TOKEN, config_path=str(EXAMPLE_CONFIG),
                  spool_dir=spool_dir())
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


@pytest.fixture
def stored(app):
    """How many events the webhooks stored in Redis: pushes in the intake, and jobs."""
    state = app.extensions["ci_autoscaler"].state
    return lambda: state.intake.counts()[0] + state.queue.count


def mover(app) -> Mover:
    """The worker's intake mover for this app's Redis, with the Jenkins URLs the worker has from
    the same settings (a STARTED's run page is recorded only under them: service.cli)."""
    ctx = app.extensions["ci_autoscaler"]
    return Mover(ctx.state, jenkins_url=ctx.settings.jenkins_url,
                 jenkins_public_url=ctx.settings.jenkins_public_url)


def work(app) -> None:
    """What a burst worker does (`ci-autoscaler worker --burst`): the records in the intake
    taken by the mover (pushes and ends made jobs, STARTEDs applied), then every job run by
    RQ's SimpleWorker, in this process; no job may fail."""
    state = app.extensions["ci_autoscaler"].state
    mover(app).drain()
    SimpleWorker([state.queue], connection=state.redis, serializer=SERIALIZER).work(burst=True)
    assert state.queue.failed_job_registry.count == 0, "a job failed; see the worker log"


@pytest.fixture
def jobs(app):
    """The RQ jobs a worker finds: the pushes in the intake made jobs first, by the worker's
    own mover (workers.engine.intake), run until the intake is empty."""
    state = app.extensions["ci_autoscaler"].state

    def made():
        mover(app).drain()
        return state.queue.get_jobs()
    return made


def production_env(monkeypatch, *, redis_url: str, kube, jenkins_fake, config, namespace: str,
                   **extra: str) -> None:
    """Configure the process as production is: everything from environment variables, the
    cluster from a kubeconfig (the chart's ServiceAccount's: kmock grants it the chart's RBAC
    alone, KubeServer.as_chart_service_account), Jenkins over HTTP."""
    values = {
        "REDIS_URL": redis_url, "KUBECONFIG": str(kube.as_chart_service_account(namespace)),
        "AGENT_NAMESPACE": namespace, "CI_AUTOSCALER_CONFIG": str(config),
        "JENKINS_URL": jenkins_fake.url, "JENKINS_USER": jenkins_fake.user,
        "JENKINS_API_TOKEN": jenkins_fake.token, "GITLAB_WEBHOOK_TOKEN": GITLAB_TOKEN,
        "JENKINS_WEBHOOK_TOKEN": JENKINS_TOKEN, "CI_AUTOSCALER_SPOOL_DIR": spool_dir(), **extra}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@contextmanager
def cluster_app(monkeypatch, tmp_path, *, redis_url: str, kube, jenkins_fake, config: str,
                namespace: str, nodes: tuple[tuple[str, str, str], ...] = (
                    ("node-a", "8", "32Gi"),), **extra: str) -> Iterator:
    """The web app configured as production is (production_env), `config` its config file's
    text, these nodes (name, cpu, memory) on the cluster, and the process's runtime made
    afresh for it and dropped after."""
    path = tmp_path / "config.yaml"
    path.write_text(config)
    production_env(monkeypatch, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
                   config=path, namespace=namespace, **extra)
    for name, cpu, memory in nodes:
        kube.add_node(name, cpu=cpu, memory=memory)
    runtime.install(None)
    try:
        yield create_app()
    finally:
        runtime.install(None)


@pytest.fixture
def app_on_cluster(monkeypatch, tmp_path, redis_url, kube, jenkins_fake) -> Iterator[Callable]:
    """cluster_app on this test's Redis, Kubernetes API mock and Jenkins fake:
    `app_on_cluster(config, namespace=..., nodes=..., **env)` returns the app; the runtime is
    dropped when the test ends."""
    with ExitStack() as stack:
        yield lambda config, **given: stack.enter_context(cluster_app(
            monkeypatch, tmp_path, redis_url=redis_url, kube=kube, jenkins_fake=jenkins_fake,
            config=config, **given))


_ONE_ROUTE = """\
routes:
  - project: "*"
    ref: "refs/*"
    job: build
    template: {name}
templates:
  {name}:
"""


def one_template_config(template: str, *, name: str = "small") -> str:
    """A config file's text whose one route sends every push to job `build` on the template
    `name`, of these lines (YAML, any indent)."""
    lines = textwrap.indent(textwrap.dedent(template).strip("\n"), "    ")
    return _ONE_ROUTE.format(name=name) + lines + "\n"

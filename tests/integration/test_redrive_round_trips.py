"""A re-drive reads the line's records in one round trip, whatever its length. Each pass
(every reconcile pass, every release's job) read each waiting build's record with a command
of its own: with thousands waiting (a burst on a full cluster), thousands of round trips a
pass before any build was tried, seconds on a Redis across the network. Counted on the wire,
not timed: a real redis-server behind a proxy that counts round trips, kmock over HTTP and
the Jenkins fake."""

from urllib.parse import urlsplit

import pytest

from tests.integration.test_concurrent_provisions import SMALL, work_while
from tests.integration.test_pod_templates import push
from tests.integration.test_push_to_pod import NAMESPACE
from tests.support.app import production_env
from tests.support.redis_trips import RoundTripProxy
from service.app import create_app
from workers import runtime
from workers.engine import redrive

WAITING = 150  # the template's cap is 2: every build after the first two waits
CHUNK = 2  # builds a re-drive tries at once: the first chunk finds the template full


@pytest.fixture
def counted(monkeypatch, tmp_path, redis_url, kube, jenkins_fake):
    """The production path, its Redis reached through the counting proxy."""
    url = urlsplit(redis_url)
    proxy = RoundTripProxy((url.hostname, url.port))
    config = tmp_path / "config.yaml"
    config.write_text(SMALL.replace("MAX", "maxConcurrent: 2"))
    kube.add_node("node-0", cpu="64", memory="256Gi")
    production_env(monkeypatch, redis_url=url._replace(netloc=f"127.0.0.1:{proxy.port}")
                   .geturl(), kube=kube, jenkins_fake=jenkins_fake, config=config,
                   namespace=NAMESPACE, CI_AUTOSCALER_PROVISION_CONCURRENCY=str(CHUNK))
    runtime.install(None)
    yield create_app(), proxy
    runtime.install(None)
    proxy.stop()


def trips_of_a_pass(app, proxy) -> int:
    rt = runtime.current()
    before = proxy.trips
    result = redrive.redrive(rt)
    assert result["placed"] == 0, result
    return proxy.trips - before


def test_a_re_drive_reads_the_waiting_builds_in_one_round_trip(counted):
    app, proxy = counted
    client = app.test_client()
    for i in range(2 + WAITING):
        push(client, i)
    work_while(app, lambda: None)
    rt = runtime.current()
    assert len(rt.capacity.waiting()) == WAITING
    few = trips_of_a_pass(app, proxy)  # the line, then one chunk's provisions, found full
    # a template found full is full for the rest of the pass: the builds after that chunk
    # cost nothing but their read. WAITING more before (each record read alone).
    assert few < WAITING / 2, few

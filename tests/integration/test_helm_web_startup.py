"""The chart's web pod is given time to start on a spool an earlier release left full."""

import pytest

from tests.integration.test_helm_spool_sentinel import _persistent
from tests.support.helm_chart import find, objects_of, option_sets, render_files


@pytest.mark.parametrize("values", [option_sets()["default"], _persistent()],
                         ids=["emptyDir", "persistent spool"])
def test_the_web_may_take_minutes_to_start_before_its_liveness_probe_counts(values):
    """gunicorn's master brings the spool file to the release's schema before it listens
    (service.startup.prepare_spool): 6 s for 240 MB here, a minute or more on a slow network
    disk at the spool's bound. The liveness probe (3 failures 10 s apart) killed the pod
    after 30 s of no /healthz; the rewrite rolled back, and the next start began it again:
    the pod never started, and its spooled pushes were never drained. Kubernetes runs no
    liveness probe until the startup probe succeeds (kubernetes.io, "Configure Liveness,
    Readiness and Startup Probes")."""
    objs = objects_of(render_files(values))
    workload, = find(objs, "Deployment", "web") + find(objs, "StatefulSet", "web")
    web = workload["spec"]["template"]["spec"]["containers"][0]
    assert web["name"] == "web"
    startup = web["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

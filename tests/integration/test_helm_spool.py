"""The chart's parts of issue 16: the web's spool on a volume (an emptyDir by default, a
PersistentVolumeClaim as an option), rendered by Helm's own SDK (tests/support/helm_chart.py;
every option set is also validated against the Kubernetes schemas by test_helm_chart.py)."""

import re

import helm_python
import pytest

from tests.support.helm_chart import (
    env_of, find, objects_of, one, option_sets, render, render_files)
from workers.config import Settings


def _web(objs):
    deployment = one(objs, "Deployment", "web")
    spec = deployment["spec"]["template"]["spec"]
    web = next(c for c in spec["containers"] if c["name"] == "web")
    return deployment, spec, web


def _spool_volume(spec, web):
    directory = env_of(web)["CI_AUTOSCALER_SPOOL_DIR"]["value"]
    mount = next(m for m in web["volumeMounts"] if m["mountPath"] == directory)
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def test_by_default_the_spool_is_an_emptydir_with_its_bounds_set():
    objs = render("default")
    deployment, spec, web = _web(objs)
    volume = _spool_volume(spec, web)
    assert volume["emptyDir"] == {"sizeLimit": "512Mi"}
    env = {k: v.get("value") for k, v in env_of(web).items()}
    settings = Settings(spool_dir=env["CI_AUTOSCALER_SPOOL_DIR"],
                        spool_max_events=env["CI_AUTOSCALER_SPOOL_MAX_EVENTS"],
                        spool_max_bytes=env["CI_AUTOSCALER_SPOOL_MAX_BYTES"])
    assert (settings.spool_max_events, settings.spool_max_bytes) == (100000, 268435456)
    assert "strategy" not in deployment["spec"] and not find(objs, "PersistentVolumeClaim")
    # Only the web has a spool: the worker and the reconcile loop never take webhooks.
    for component in ("worker", "reconcile"):
        container = one(objs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
        assert "CI_AUTOSCALER_SPOOL_DIR" not in env_of(container)


def test_the_spool_on_a_claim_of_its_own_recreates_its_one_pod():
    objs = render("spool-pvc")
    deployment, spec, web = _web(objs)
    claim = one(objs, "PersistentVolumeClaim", "web")
    assert _spool_volume(spec, web)["persistentVolumeClaim"] == {
        "claimName": claim["metadata"]["name"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_an_existing_claim_is_used_and_none_is_made():
    values = option_sets()["spool-pvc"]
    values = values | {"web": {"replicas": 1, "spool": {"persistence": {
        "enabled": True, "existingClaim": "my-spool"}}}}
    objs = objects_of(render_files(values))
    _, spec, web = _web(objs)
    assert _spool_volume(spec, web)["persistentVolumeClaim"] == {"claimName": "my-spool"}
    assert not find(objs, "PersistentVolumeClaim")


def test_a_spool_claim_with_more_than_one_web_pod_is_refused_with_the_reason():
    values = option_sets()["spool-pvc"] | {"web": {"replicas": 2, "spool": {
        "persistence": {"enabled": True}}}}
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape("web.spool.persistence.enabled: needs web.replicas 1")):
        render_files(values)

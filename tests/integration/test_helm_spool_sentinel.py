"""The chart's parts of issue 16: the web's spool on a volume (an emptyDir by default, a
PersistentVolumeClaim as an option), the bundled Redis with replicas and Sentinel, and its
durability setting; rendered by Helm's own SDK (tests/support/helm_chart.py; every option set
is also validated against the Kubernetes schemas and linted by test_helm_chart.py)."""

import base64
import re

import helm_python
import kubernetes_validate
import pytest

from tests.support.helm_chart import (
    CHART, env_of, find, objects_of, one, option_sets, render, render_files)
from workers.config.settings import Settings


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


def _persistent(**persistence):
    """The default values (what every install needs) with only the spool's claim switched on:
    what an operator gets with `--set web.spool.persistence.enabled=true` alone."""
    return option_sets()["default"] | {"web": {"spool": {"persistence": {
        "enabled": True, **persistence}}}}


def test_the_spool_claim_alone_makes_a_statefulset_with_a_claim_per_pod():
    """Issue 16: the spool on a volume, a PVC as an option. The claim is ReadWriteOnce (SQLite's
    WAL needs one node's disk), so with the default two web pods each pod gets its own from the
    StatefulSet's volumeClaimTemplates: the render used to fail ("needs web.replicas 1")."""
    objs = objects_of(render_files(_persistent(size="3Gi", storageClass="fast-ssd")))
    assert not find(objs, "Deployment", "web") and not find(objs, "PersistentVolumeClaim")
    sts = one(objs, "StatefulSet", "web")
    spec = sts["spec"]
    assert spec["replicas"] == 2
    (template,) = spec["volumeClaimTemplates"]
    assert template["spec"] == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                                "resources": {"requests": {"storage": "3Gi"}}}
    # The pods' volume "spool", where CI_AUTOSCALER_SPOOL_DIR is mounted, is that template's
    # claim: a pod volume of the same name would be a second definition of it.
    pod = spec["template"]["spec"]
    web = next(c for c in pod["containers"] if c["name"] == "web")
    directory = env_of(web)["CI_AUTOSCALER_SPOOL_DIR"]["value"]
    mount = next(m for m in web["volumeMounts"] if m["mountPath"] == directory)
    assert mount["name"] == template["metadata"]["name"]
    assert mount["name"] not in {v["name"] for v in pod["volumes"]}
    # Rolled pod by pod; claims with answered pushes kept on scale-down and uninstall.
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain",
                                                            "whenScaled": "Retain"}
    # The Service, PDB, NetworkPolicy and ServiceMonitor find these pods as they found the
    # Deployment's, and the StatefulSet's service is the web Service (no second one to scrape).
    labels = spec["template"]["metadata"]["labels"]
    service = one(objs, "Service", "web")
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        obj = one(objs, kind, "web")
        selector = obj["spec"].get("selector") or obj["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= labels.items(), kind
    assert template["metadata"]["labels"].items() <= spec["selector"]["matchLabels"].items()
    # Without the claim the web stays a Deployment with an emptyDir spool; everything else its
    # pod had is the StatefulSet's pod: only the spool volume differs.
    default = render("default")
    assert not find(default, "StatefulSet", "web")
    deployment, default_pod, default_web = _web(default)
    assert _spool_volume(default_pod, default_web) == {"name": "spool",
                                                      "emptyDir": {"sizeLimit": "512Mi"}}
    assert "volumeClaimTemplates" not in deployment["spec"]
    default_pod["volumes"] = [v for v in default_pod["volumes"] if v["name"] != "spool"]
    assert pod == default_pod


@pytest.mark.parametrize("version", ("1.29.0", "1.33.0"))
def test_the_spool_claim_alone_renders_valid_objects_and_lints_clean(version):
    values = _persistent()
    for obj in objects_of(render_files(values)):
        if not obj["apiVersion"].startswith(("monitoring.coreos.com/", "keda.sh/")):
            kubernetes_validate.validate(obj, version, strict=True)
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{version}")
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []


def test_the_spool_pvc_option_set_has_its_one_pod_on_a_claim_of_its_own():
    objs = render("spool-pvc")
    sts = one(objs, "StatefulSet", "web")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"] == {
        "requests": {"storage": "2Gi"}}
    assert not find(objs, "Deployment", "web") and not find(objs, "PersistentVolumeClaim")


def test_an_existing_claim_is_used_and_none_is_made():
    values = option_sets()["spool-pvc"]
    values = values | {"web": {"replicas": 1, "spool": {"persistence": {
        "enabled": True, "existingClaim": "my-spool"}}}}
    objs = objects_of(render_files(values))
    deployment, spec, web = _web(objs)
    assert _spool_volume(spec, web)["persistentVolumeClaim"] == {"claimName": "my-spool"}
    assert not find(objs, "PersistentVolumeClaim") and not find(objs, "StatefulSet", "web")
    # One pod on one ReadWriteOnce volume: the new pod starts once the old one is gone.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_an_existing_claim_with_more_than_one_web_pod_is_refused_with_the_reason():
    values = _persistent(existingClaim="my-spool")
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(
            "web.spool.persistence.existingClaim: needs web.replicas 1, not 2")) as err:
        render_files(values)
    assert "leave existingClaim empty for a claim per web pod" in str(err.value)


def test_notes_say_where_the_claims_are_and_what_an_upgrade_from_a_deployment_leaves():
    values = _persistent()
    chart = helm_python.Chart.load(CHART)
    installed = chart.render(values, name="cia", namespace="ci", is_install=True)
    upgraded = chart.render(values, name="cia", namespace="ci", is_upgrade=True, revision=2)
    notes = [files["ci-autoscaler/templates/NOTES.txt"] for files in (installed, upgraded)]
    for text in notes:
        assert "claims spool-cia-ci-autoscaler-web-<n>" in text
        assert "keeps its spooled pushes until that pod comes back" in text
    assert "cia-ci-autoscaler-web-spool" not in notes[0]
    assert "PVC cia-ci-autoscaler-web-spool is kept" in notes[1]


@pytest.mark.parametrize("spool, fits", [
    ({"maxBytes": 1073741824, "sizeLimit": "512Mi"}, False),  # 1 GiB of pushes in 512Mi
    ({"maxBytes": 1073741824, "sizeLimit": "2Gi"}, True),
    ({"sizeLimit": "300Mi"}, False),  # the default 256 MiB bound: a file of ~310 MiB
    ({"maxBytes": 8388608, "sizeLimit": "64Mi"}, True),
    # A number of bytes (values.schema.json allows one): Helm reads a values file's numbers as
    # floats, which Sprig's toString writes "3.145728e+08"; such a limit escaped the check.
    ({"sizeLimit": 314572800}, False),
    ({"sizeLimit": 314572800.0}, False),
    ({"maxBytes": 8388608, "sizeLimit": 67108864}, True),
])
def test_an_emptydir_spool_smaller_than_its_bound_is_refused(spool, fits):
    """The kubelet evicts a pod whose emptyDir outgrows its sizeLimit, and the emptyDir goes
    with the pod: every spooled push was lost, where a spool at its bound answers 503 and keeps
    them. SQLite's file takes more than the payloads (measured: 1.2x for 900-byte pushes, plus
    a WAL of about 4 MiB), so the bound must fit the volume with room to spare."""
    values = option_sets()["default"] | {"web": {"spool": spool}}
    if fits:
        render_files(values)
        return
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape("web.spool.sizeLimit: ")):
        render_files(values)


@pytest.mark.parametrize("spool, fits", [
    ({"maxBytes": 1073741824, "persistence": {"size": "1Gi"}}, False),
    ({"maxBytes": 1073741824, "persistence": {"size": "2Gi"}}, True),
    ({"persistence": {"size": "300Mi"}}, False),  # the default 256 MiB bound
    ({"persistence": {"size": "352Mi"}}, True),
    ({"maxBytes": 1073741824, "persistence": {"existingClaim": "mine"}}, True),  # not ours
])
def test_a_spool_claim_smaller_than_its_bound_is_refused(spool, fits):
    """A claim that fills before the spool reaches its bound answers 503 ("full") early, and
    GitLab never sends a refused delivery again: the size must hold the bound, as an emptyDir's
    sizeLimit must."""
    persistence = {"enabled": True, **spool.pop("persistence")}
    values = option_sets()["default"] | {"web": {"replicas": 1, "spool": {
        **spool, "persistence": persistence}}}
    if fits:
        render_files(values)
        return
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape("web.spool.persistence.size: ")):
        render_files(values)


@pytest.mark.parametrize("max_bytes, size_limit", [
    (None, "512Mi"),  # the default bound (256 MiB: 352Mi needed) gets the 512Mi floor
    (1073741824, "1312Mi"),  # 1 GiB x 1.25 + 32Mi
])
def test_an_emptydir_spool_without_a_size_limit_is_sized_from_its_bound(max_bytes, size_limit):
    """An operator who raises web.spool.maxBytes alone gets an emptyDir that holds it."""
    spool = {} if max_bytes is None else {"maxBytes": max_bytes}
    values = option_sets()["default"] | {"web": {"spool": spool}}
    _, spec, web = _web(objects_of(render_files(values)))
    assert _spool_volume(spec, web)["emptyDir"] == {"sizeLimit": size_limit}


# -- Redis with replicas and Sentinel ---------------------------------------------------------

def _redis_pod(objs):
    sts = one(objs, "StatefulSet", "redis")
    return sts, {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}


def test_by_default_one_redis_fsyncs_every_write_and_no_sentinel_is_named():
    objs = render("default")
    sts, containers = _redis_pod(objs)
    assert sts["spec"]["replicas"] == 1 and list(containers) == ["redis"]
    assert "--appendonly yes" in containers["redis"]["args"][0]
    assert "--appendfsync always" in containers["redis"]["args"][0]
    for component in ("web", "worker", "reconcile"):
        env = env_of(one(objs, "Deployment", component)["spec"]["template"]["spec"]
                     ["containers"][0])
        assert "REDIS_SENTINELS" not in env and "CI_AUTOSCALER_REDIS_MIN_REPLICAS" not in env
    assert not [o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"]


def test_sentinel_runs_three_redis_pods_each_with_a_sentinel_on_per_pod_names():
    objs = render("redis-sentinel")
    sts, containers = _redis_pod(objs)
    assert sts["spec"]["replicas"] == 3 and set(containers) == {"redis", "sentinel"}
    headless = next(o for o in find(objs, "Service", "redis") if o["spec"].get("clusterIP") == "None")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"redis": 6379,
                                                                          "sentinel": 26379}
    pods = [f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}.ci.svc"
            for i in range(3)]
    redis_script, sentinel_script = containers["redis"]["args"][0], containers["sentinel"]["args"][0]
    # Pod 0 is the master when no sentinel names one (a first install); the others follow the
    # master; the password is in config files on the memory emptyDir, never a command line.
    assert f'master="{pods[0]}"' in redis_script and "replicaof %s 6379" in redis_script
    assert "masterauth" in redis_script and "--appendfsync always" in redis_script
    assert "sentinel monitor ci-autoscaler $master 6379 2" in sentinel_script
    assert 'sentinel auth-pass ci-autoscaler "$REDIS_PASSWORD"' in sentinel_script
    assert "sentinel resolve-hostnames yes" in sentinel_script
    for component in ("web", "worker", "reconcile"):
        env = {k: v.get("value") for k, v in env_of(one(objs, "Deployment", component)
                                                      ["spec"]["template"]["spec"]
                                                      ["containers"][0]).items()}
        settings = Settings(redis_url="redis://:p@unused:6379/0",
                            redis_sentinels=env["REDIS_SENTINELS"],
                            redis_sentinel_master=env["REDIS_SENTINEL_MASTER"],
                            redis_min_replicas=env["CI_AUTOSCALER_REDIS_MIN_REPLICAS"])
        assert settings.sentinels == tuple((pod, 26379) for pod in pods), component
        assert settings.redis_sentinel_master == "ci-autoscaler"
        assert settings.redis_min_replicas == 1


def test_sentinel_traffic_is_let_in_from_the_service_and_between_the_redis_pods():
    objs = render("redis-sentinel")
    policy = one(objs, "NetworkPolicy", "redis")
    from_service, between = policy["spec"]["ingress"]
    assert {p["port"] for p in from_service["ports"]} == {"redis", "sentinel"}
    [peer] = between["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert {p["port"] for p in between["ports"]} == {"redis", "sentinel"}


@pytest.mark.parametrize("replicas,quorum,min_replicas", [
    (3, 2, 1), (3, 3, 1), (5, 2, 1), (5, 3, 1), (4, 1, 1), (5, 2, 3), (5, 2, 4), (4, 2, 0)])
def test_a_drain_never_takes_more_sentinel_pods_than_a_failover_can_spare(replicas, quorum,
                                                                         min_replicas):
    """A failover needs `quorum` sentinels to agree the master is down and a majority of all
    sentinels to elect the one that does it (Redis docs, "High availability with Redis
    Sentinel": quorum and majority). Without a PodDisruptionBudget the eviction API lets a
    drain (or several, in a node pool upgrade) take two of three pods at once: no failover.
    The master must keep minReplicas replicas too (WAIT), or every push is spooled: 5 pods
    with minReplicas 3 may lose 1, not the 2 a failover could spare."""
    values = option_sets()["redis-sentinel"]
    values = values | {"redis": {**values["redis"], "sentinel": {
        "enabled": True, "replicas": replicas, "quorum": quorum, "minReplicas": min_replicas}}}
    pdbs = find(objects_of(render_files(values)), "PodDisruptionBudget", "redis")
    assert len(pdbs) == 1, "no PodDisruptionBudget for the Redis pods"
    spec = pdbs[0]["spec"]
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    needed = max(quorum, replicas // 2 + 1, min_replicas + 1)
    # at most what a failover can spare, and never 0: a budget of 0 blocks a drain for ever
    assert spec["maxUnavailable"] == max(1, replicas - needed)


def test_the_one_bundled_redis_gets_no_disruption_budget():
    assert find(render("default"), "PodDisruptionBudget", "redis") == []


@pytest.mark.parametrize("sentinel,message", [
    ({"enabled": True, "replicas": 2}, "'/redis/sentinel/replicas': minimum: got 2, want 3"),
    ({"enabled": True, "replicas": 3, "quorum": 4}, "redis.sentinel.quorum: at most"),
    ({"enabled": True, "replicas": 3, "minReplicas": 3}, "redis.sentinel.minReplicas: at most"),
])
def test_a_sentinel_set_that_cannot_keep_a_quorum_is_refused(sentinel, message):
    values = option_sets()["redis-sentinel"]
    values = values | {"redis": {**values["redis"], "sentinel": sentinel}}
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render_files(values)


def test_your_own_sentinels_are_given_to_every_process():
    values = option_sets()["external-redis"]
    values = values | {"redis": {**values["redis"], "external": {
        **values["redis"]["external"], "sentinels": ["s-1.example:26379", "s-2.example:26379"],
        "sentinelMaster": "mymaster", "minReplicas": 1}}}
    objs = objects_of(render_files(values))
    for component in ("web", "worker", "reconcile"):
        env = env_of(one(objs, "Deployment", component)["spec"]["template"]["spec"]
                     ["containers"][0])
        assert env["REDIS_SENTINELS"]["value"] == "s-1.example:26379,s-2.example:26379"
        assert env["REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
        assert env["CI_AUTOSCALER_REDIS_MIN_REPLICAS"]["value"] == "1"
    del values["redis"]["external"]["sentinelMaster"]
    with pytest.raises(helm_python.HelmError, match="redis.external.sentinelMaster: required"):
        render_files(values)


@pytest.mark.parametrize("external, secret_key", [
    ({"sentinelPassword": "s" * 32}, "redis-sentinel-password"),
    ({"existingSecret": "my-redis", "existingSecretSentinelPasswordKey": "sentinel-pw"},
     "sentinel-pw")])
def test_your_own_sentinels_password_is_given_to_every_process(external, secret_key):
    """Sentinels with requirepass answer a client without the password NOAUTH
    (test_sentinel_auth.py): the chart had no way to give it to the service."""
    values = option_sets()["external-redis"]
    values = values | {"redis": {**values["redis"], "external": {
        **values["redis"]["external"], "sentinels": ["s-1.example:26379"],
        "sentinelMaster": "mymaster", **external}}}
    objs = objects_of(render_files(values))
    secret_name = external.get("existingSecret") or one(objs, "Secret", "redis")["metadata"]["name"]
    if "sentinelPassword" in external:
        secret = one(objs, "Secret", "redis")
        assert base64.b64decode(secret["data"][secret_key]).decode() == external["sentinelPassword"]
    for component in ("web", "worker", "reconcile"):
        env = env_of(one(objs, "Deployment", component)["spec"]["template"]["spec"]
                     ["containers"][0])
        assert env["REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name, "key": secret_key}, component

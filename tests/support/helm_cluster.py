"""Helm's SDK rendering the chart against an API server, so that `lookup` reads the cluster as
`helm install` and `helm upgrade` do: kmock over real HTTP, serving the discovery documents of
the kinds the chart makes, and `install` with dry_run="server" (Helm reads, renders, checks
ownership, and writes nothing).

`Chart.render` cannot be used for this: it never contacts a cluster, and its `lookup` returns
nothing (helm_python.Chart.render's docstring). What kmock does not do, and how it is covered:
- its /api/v1 discovery document names its groupVersion "/v1" (the real API server: "v1"), which
  client-go's REST mapper cannot match to kind Secret: a corrected document is served;
- it serves no OpenAPI document (/openapi/v2, /openapi/v3): Helm's schema validation of the
  manifest is turned off (the option `disable_openapi_validation`, which helm_python's
  `install()` does not expose: the SDK's native call is made with it, as its `install()` does);
  the tests validate every object with kubernetes-validate instead;
- it ignores label selectors, so Helm's release storage (Secrets listed by owner=helm) would
  read the chart's own Secrets as releases: the storage is Helm's in-memory driver.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kmock
import yaml
from helm_python import _native

from tests.support.helm_chart import CHART, NAMESPACE, RELEASE
from tests.support.kmock_cluster import _QuickStopServer, _write_kubeconfig

_CALL_TIMEOUT = 10.0
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# kind -> (apiVersion, plural, namespaced): every kind the chart's default render makes.
KINDS = {
    "Secret": ("v1", "secrets", True), "ConfigMap": ("v1", "configmaps", True),
    "Service": ("v1", "services", True), "ServiceAccount": ("v1", "serviceaccounts", True),
    "Namespace": ("v1", "namespaces", False),
    "Deployment": ("apps/v1", "deployments", True),
    "StatefulSet": ("apps/v1", "statefulsets", True),
    "NetworkPolicy": ("networking.k8s.io/v1", "networkpolicies", True),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets", True),
    "Role": ("rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings", True),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
}
SECRETS = kmock.resource("v1/secrets")


class HelmCluster:
    """A kmock API server that Helm's SDK installs into (dry run), with the release's objects
    of an earlier install seeded as Helm would have left them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emu: kmock.KubernetesEmulator,
                 kubeconfig: Path):
        self._loop, self._emu, self.kubeconfig = loop, emu, kubeconfig

    def seed_secret(self, name: str, data: dict[str, str]) -> None:
        """A Secret of the release, as `helm install` made it: Helm's ownership label and
        annotations (Helm refuses to take over an object without them)."""
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": NAMESPACE,
                               "labels": {"app.kubernetes.io/managed-by": "Helm"},
                               "annotations": {"meta.helm.sh/release-name": RELEASE,
                                               "meta.helm.sh/release-namespace": NAMESPACE}},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        self._run(lambda: self._emu.objects.__setitem__((SECRETS, NAMESPACE, name),
                                                        copy.deepcopy(secret)))

    def render(self, values: dict[str, Any]) -> list[dict[str, Any]]:
        """The objects `helm install --dry-run=server` renders against this cluster."""
        with helm_python.Config(kubeconfig_path=self.kubeconfig, storage_driver="memory",
                                namespace=NAMESPACE) as config, \
                helm_python.Chart.load(CHART) as chart:
            payload = _native.call_string(
                "helm_install", config._raw(), config._context_arg(None), chart._raw(), None,
                RELEASE, json.dumps(values),
                json.dumps({"namespace": NAMESPACE, "dry_run": "server",
                            "disable_openapi_validation": True}))
        manifest = json.loads(payload)["manifest"]
        return [doc for doc in yaml.safe_load_all(manifest) if doc]

    def requests(self) -> list[str]:
        return self._run(lambda: [f"{r.method.value} {r.url.path}" for r in self._emu])

    def _run(self, fn):
        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(_CALL_TIMEOUT)


def _discovery(emu: kmock.KubernetesEmulator) -> None:
    for kind, (api_version, plural, namespaced) in KINDS.items():
        emu.resources[kmock.resource(f"{api_version}/{plural}")] = kmock.ResourceInfo(
            namespaced=namespaced, kind=kind, verbs=VERBS)
    # The real API server's /api/v1 (kmock's says groupVersion "/v1").
    emu["get /api/v1"] << {
        "apiVersion": "v1", "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [{"name": plural, "kind": kind, "singularName": kind.lower(),
                       "namespaced": namespaced, "verbs": VERBS}
                      for kind, (api_version, plural, namespaced) in KINDS.items()
                      if api_version == "v1"]}
    # A version the chart's kubeVersion (>=1.29) admits (kmock's own: v1.26.4+k3s1).
    emu["get /version"] << {"major": "1", "minor": "30", "gitVersion": "v1.30.0",
                            "platform": "linux/amd64"}


@contextlib.contextmanager
def helm_cluster(tmp_path: Path) -> Iterator[HelmCluster]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock-helm", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[kmock.KubernetesEmulator, str]:
        emu = kmock.KubernetesEmulator()
        _discovery(emu)
        await stack.enter_async_context(emu)
        server = await stack.enter_async_context(kmock.Server(emu, server_cls=_QuickStopServer))
        return emu, str(server.url).rstrip("/")

    try:
        emu, url = asyncio.run_coroutine_threadsafe(start(), loop).result(_CALL_TIMEOUT)
        kubeconfig = tmp_path / "kubeconfig"
        _write_kubeconfig(kubeconfig, url)
        yield HelmCluster(loop, emu, kubeconfig)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(_CALL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CALL_TIMEOUT)
        loop.close()

"""`helm upgrade --reuse-values` from an older chart: Helm renders the new templates with the
old release's values alone (helm's action/upgrade.go, reuseValues: the chart's own values are
replaced by the old chart's, coalesced with the release's config), so a value the new chart
added is missing, not its default. Each such value must fall back in its template to what
values.yaml says, or the upgrade silently renders Kubernetes' default (or nothing).

Rendered by Helm's own SDK (tests/support/helm_chart.py); no cluster, no helm binary.
"""


import helm_python
import pytest
import yaml

from tests.support.helm_chart import REQUIRED_VALUES, chart_at, chart_copy, one, render_chart


# The chart before the last thirty commits to helm/ (main, 2026-12-05 04:03 UTC): since, values
# added reconcile.terminationGracePeriodSeconds, ingress.maxBodySize and
# networkPolicy.agents.dns.addresses, and none other. Its archive is kept with the tests
# (tests/fixtures/charts; helm_chart.chart_at), not read from git.
OLD_COMMIT = "c4a262abdd05c976cd07a6b6e1afc255c549a387"


@pytest.fixture(scope="module")
def reused(tmp_path_factory):
    """Today's chart with the old chart's values.yaml in place of its own: what
    `helm upgrade --reuse-values` renders for a release installed from the old chart."""
    old = chart_at(OLD_COMMIT, tmp_path_factory.mktemp("old-chart"))
    new = chart_copy(tmp_path_factory.mktemp("new-chart"))
    (new / "values.yaml").write_text((old / "values.yaml").read_text())
    return helm_python.Chart.load(new)


def _values(**extra):
    return {**REQUIRED_VALUES, **extra}


def test_the_old_values_lack_the_new_keys_this_test_is_about(tmp_path):
    old = yaml.safe_load((chart_at(OLD_COMMIT, tmp_path) / "values.yaml").read_text())
    assert "terminationGracePeriodSeconds" not in old["reconcile"]
    assert "addresses" not in old["networkPolicy"]["agents"]["dns"]
    assert "maxBodySize" not in old["ingress"]


def test_the_reconcile_pod_keeps_its_60_s_to_stop(reused):
    """Rendered empty, the field was left out: Kubernetes' 30 s, and a pass SIGKILLed."""
    objs = render_chart(reused, _values(), upgrade=True)
    spec = one(objs, "Deployment", "reconcile")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60


def test_agents_still_reach_nodelocal_dns(reused):
    """Rendered with no addresses, the agents' DNS through NodeLocal DNSCache was dropped by
    their default-deny policy: every build failed to resolve names after the upgrade."""
    objs = render_chart(reused, _values(), upgrade=True)
    policy = one(objs, "NetworkPolicy", "agents")
    cidrs = {peer["ipBlock"]["cidr"] for rule in policy["spec"]["egress"]
             for peer in rule.get("to", []) if "ipBlock" in peer}
    assert {"169.254.20.10/32", "169.254.25.10/32"} <= cidrs


def test_the_ingress_still_takes_pushes_of_25_mb(reused):
    """Without the annotation ingress-nginx refuses bodies over 1 MB (413), GitLab counts a
    failure, and four disable the hook."""
    objs = render_chart(reused, _values(ingress={"enabled": True}),
                        upgrade=True)
    annotations = one(objs, "Ingress")["metadata"].get("annotations", {})
    assert annotations.get("nginx.ingress.kubernetes.io/proxy-body-size") == "25m"


def test_explicit_values_are_kept(reused):
    objs = render_chart(reused, _values(
        reconcile={"terminationGracePeriodSeconds": 0},
        networkPolicy={**REQUIRED_VALUES["networkPolicy"],
                       "agents": {**REQUIRED_VALUES["networkPolicy"]["agents"],
                                  "dns": {"addresses": []}}}), upgrade=True)
    spec = one(objs, "Deployment", "reconcile")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 0  # a value, not "empty"
    policy = one(objs, "NetworkPolicy", "agents")
    assert not [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])
                if peer.get("ipBlock", {}).get("cidr", "").startswith("169.254.")]
    objs = render_chart(reused, _values(ingress={"enabled": True, "maxBodySize": ""}),
                        upgrade=True)
    assert "nginx.ingress.kubernetes.io/proxy-body-size" not in \
        one(objs, "Ingress")["metadata"].get("annotations", {})




def test_the_web_listens_on_every_address_and_the_engines_get_their_liveness_probes(reused):
    """web.listenHost, worker.livenessSeconds and reconcile.livenessSeconds came after the old
    chart: missing, the bind read "%!s(<nil>):8080" and the probes' age was empty (every probe
    failed, every worker and reconcile pod restarted for ever)."""
    objs = render_chart(reused, _values(), upgrade=True)
    web = one(objs, "Deployment", "web")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in web["env"]}
    assert (env["CI_AUTOSCALER_BIND"], env["CI_AUTOSCALER_ADMIN_BIND"]) == ("*:8080", "*:9090")
    for component, seconds in (("worker", "180"), ("reconcile", "720")):
        container = one(objs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["exec"]["command"][-1] == seconds, component

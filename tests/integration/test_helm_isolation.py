"""The chart keeps agents (which run build code) apart, rendered by Helm's own SDK: their own
namespace with Pod Security labels; a default-deny NetworkPolicy that lets them reach only DNS,
Jenkins and the listed destinations, with cloud metadata addresses cut out of every range (the
chart's CIDR arithmetic checked against Python's ipaddress); a web NetworkPolicy that admits the
Ingress controller and Prometheus, never the agent namespace (its selectors evaluated against
namespaces as Kubernetes would); and Redis's maxmemory below its container's memory limit."""

import ipaddress
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.support.helm_chart import NAMESPACE, objects_of, one, option_sets, render, render_files

AGENTS_NAMESPACE = f"{NAMESPACE}-agents"
METADATA = ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32")
HTTPS = [{"port": 443, "protocol": "TCP"}]


def _with(base: str = "default", **sections: dict[str, Any]) -> dict[str, Any]:
    """An option set's values with sections merged in, recursively."""
    def merge(into: dict, change: dict) -> dict:
        out = dict(into)
        for key, value in change.items():
            out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
        return out
    return merge(option_sets()[base], sections)


def _objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return objects_of(render_files(values))


def _agents_policy(values: dict[str, Any]) -> dict[str, Any]:
    return one(_objects(values), "NetworkPolicy", "agents")


def _egress_with(*rules: dict[str, Any], **agents: Any) -> dict[str, Any]:
    return _agents_policy(_with(networkPolicy={"agents": {"egress": list(rules), **agents}}))


# -- the label selector semantics of Kubernetes (apimachinery labels.Selector) ----------------

def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches these labels: every matchLabels pair and every
    matchExpression (In, NotIn, Exists, DoesNotExist); an empty selector matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _admitted(policy: dict[str, Any], namespace: str, pod_labels: dict[str, str],
              port: str | None = None, namespace_labels: dict[str, str] | None = None) -> bool:
    """Whether an ingress rule of the policy (in NAMESPACE) admits a pod with these labels in
    this namespace (to this named port, when given); every namespace carries
    kubernetes.io/metadata.name, as the API server sets, beside namespace_labels."""
    ns_labels = {**(namespace_labels or {}), "kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"].get("ingress", []):
        if port is not None and port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for peer in rule.get("from", []):
            if "namespaceSelector" in peer:
                in_namespace = _selects(peer["namespaceSelector"], ns_labels)
            else:
                in_namespace = namespace == policy["metadata"]["namespace"]
            if in_namespace and _selects(peer.get("podSelector"), pod_labels):
                return True
    return False


# -- the agent namespace ----------------------------------------------------------------------

def test_agents_get_a_namespace_of_their_own_with_pod_security_labels():
    objs = render("default")
    namespace = one(objs, "Namespace", "agents")
    assert namespace["metadata"]["name"] == AGENTS_NAMESPACE != NAMESPACE
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert labels["pod-security.kubernetes.io/audit"] == "restricted"
    assert {labels[f"pod-security.kubernetes.io/{m}-version"]
            for m in ("enforce", "warn", "audit")} == {"latest"}
    worker = one(objs, "Deployment", "worker")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in worker["env"]}["AGENT_NAMESPACE"] == \
        AGENTS_NAMESPACE
    assert one(objs, "Role")["metadata"]["namespace"] == AGENTS_NAMESPACE


def test_pod_security_is_configurable_but_never_below_baseline():
    values = _with(agents={"podSecurity": {"enforce": "restricted", "version": "v1.30"}})
    labels = one(_objects(values), "Namespace", "agents")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "v1.30"
    with pytest.raises(helm_python.HelmValuesError, match="/agents/podSecurity/enforce"):
        render_files(_with(agents={"podSecurity": {"enforce": "privileged"}}))


def test_agents_beside_the_service_get_a_policy_on_their_label_and_no_namespace():
    objs = _objects(_with(agents={"namespace": NAMESPACE}))
    assert not [o for o in objs if o["kind"] == "Namespace"]
    policy = one(objs, "NetworkPolicy", "agents")
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "ci-autoscaler"}}


# -- the agents' default-deny NetworkPolicy ---------------------------------------------------

def test_agents_take_no_traffic_and_reach_only_dns_and_jenkins_by_default():
    policy = one(render("default"), "NetworkPolicy", "agents")
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == AGENTS_NAMESPACE
    assert spec["podSelector"] == {}  # every pod of their namespace
    assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec
    dns, jenkins = spec["egress"]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
        {"ipBlock": {"cidr": NODE_LOCAL_DNS}}, {"ipBlock": {"cidr": KUBESPRAY_NODE_LOCAL_DNS}}]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"),
                                                                        (53, "UDP")]
    assert jenkins["to"] == [{"ipBlock": {"cidr": "10.20.0.15/32"}}]
    # default values: no jenkins.url, so https's 443; and the inbound agent port
    assert [p["port"] for p in jenkins["ports"]] == [443, 50000]


# NodeLocal DNSCache: a hostNetwork pod on every node answering on a link-local address,
# 169.254.20.10 by default (kubernetes cluster/addons/dns/nodelocaldns, README and
# nodelocaldns.yaml, __PILLAR__LOCAL__DNS__); kubelet's --cluster-dns then names it in every
# pod's resolv.conf. A NetworkPolicy podSelector never matches a hostNetwork pod's address, so
# only an ipBlock lets an agent's lookups through (Calico docs, "Use NodeLocal DNSCache").
NODE_LOCAL_DNS = "169.254.20.10/32"
KUBESPRAY_NODE_LOCAL_DNS = "169.254.25.10/32"  # kubespray_defaults: nodelocaldns_ip


def _reaches_dns_at(policy: dict[str, Any], address: str) -> bool:
    """Whether a NetworkPolicy lets a pod send DNS (UDP and TCP 53) to `address`, as
    Kubernetes reads it: some rule with an ipBlock holding the address (outside its excepts)
    and both ports."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"]["egress"]:
        ports = {(p.get("port"), p.get("protocol", "TCP")) for p in rule.get("ports", [])}
        if rule.get("ports") and not {(53, "UDP"), (53, "TCP")} <= ports:
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block and ip in ipaddress.ip_network(block["cidr"]) and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def test_agents_resolve_names_through_nodelocal_dnscache():
    policy = one(render("default"), "NetworkPolicy", "agents")
    assert _reaches_dns_at(policy, "169.254.20.10")
    assert not _reaches_dns_at(policy, "169.254.169.254")  # metadata stays out of reach
    kubernetes_validate.validate(policy, "1.30.0", strict=True)


def test_agents_resolve_names_through_kubesprays_nodelocal_dnscache_by_default():
    """Kubespray, which enables NodeLocal DNSCache by default, puts it on 169.254.25.10
    (roles/kubespray_defaults/defaults/main/main.yml: nodelocaldns_ip): with only the upstream
    address allowed, an agent on such a cluster resolved nothing and never connected."""
    policy = one(render("default"), "NetworkPolicy", "agents")
    assert _reaches_dns_at(policy, "169.254.25.10")


def test_agents_resolve_names_at_the_dns_addresses_given_and_never_at_metadata():
    policy = _agents_policy(_with(networkPolicy={"agents": {"dns": {
        "addresses": ["10.96.0.10/32"]}}}))  # node-local-dns holding kube-dns' ClusterIP
    assert _reaches_dns_at(policy, "10.96.0.10")
    assert not _reaches_dns_at(policy, "169.254.20.10")
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(
            "networkPolicy.agents.dns.addresses: to[1].ipBlock 169.254.169.254/32 is a cloud")):
        render_files(_with(networkPolicy={"agents": {"dns": {
            "addresses": ["169.254.169.254/32"]}}}))


@pytest.mark.parametrize("jenkins,ports,expected", [
    ({"url": "https://jenkins.example.com"}, [], [443, 50000]),
    ({"url": "http://jenkins.example.com"}, [], [80, 50000]),
    ({"url": "https://j.example.com", "agentUrl": "http://jenkins.ci.svc:8080"}, [],
     [8080, 50000]),
    ({"url": "https://jenkins.example.com"}, [8443, 50001], [8443, 50001]),
])
def test_agents_reach_an_external_jenkins_on_its_http_and_agent_ports(jenkins, ports, expected):
    policy = _agents_policy(_with(jenkins=jenkins, networkPolicy={
        "agents": {"jenkins": {"addresses": ["10.20.0.15/32"], "ports": ports}}}))
    rule = policy["spec"]["egress"][1]
    assert [p["port"] for p in rule["ports"]] == expected
    assert {p["protocol"] for p in rule["ports"]} == {"TCP"}


def test_agents_reach_the_bundled_jenkins_by_its_pods_on_http_and_the_agent_port():
    objs = render("jenkins")
    egress = one(objs, "NetworkPolicy", "agents")["spec"]["egress"]
    assert len(egress) == 2  # DNS and Jenkins
    [peer] = egress[1]["to"]
    jenkins = one(objs, "StatefulSet", "jenkins")
    assert peer["podSelector"]["matchLabels"] == jenkins["spec"]["selector"]["matchLabels"]
    assert peer["namespaceSelector"] == {"matchLabels": {
        "kubernetes.io/metadata.name": NAMESPACE}}
    ports = {p["containerPort"] for p in jenkins["spec"]["template"]["spec"]["containers"][0][
        "ports"]}
    assert {p["port"] for p in egress[1]["ports"]} == ports == {8080, 50000}


def test_without_jenkins_addresses_the_render_fails_and_says_why():
    values = _with()
    values["networkPolicy"] = {"agents": {"jenkins": {"addresses": []}}}
    with pytest.raises(helm_python.HelmRenderError,
                       match=re.escape("networkPolicy.agents.jenkins.addresses")):
        render_files(values)


CIDRS = ["0.0.0.0/0", "::/0", "169.254.0.0/16", "169.254.169.0/24", "169.254.169.254/31",
         "100.64.0.0/10", "100.100.100.200/30", "10.0.0.0/8", "192.168.0.0/16", "fc00::/7",
         "fd00::/8", "fd00:ec2::/32", "fd00:ec2::254/127", "2001:db8::/32", "fd00:ec3::/32",
         "128.0.0.0/1", "0.0.0.0/1", "::ffff:0:0/96", "FD00:EC2:0:0:0:0:0:0/64"]


@pytest.mark.parametrize("cidr", CIDRS)
def test_every_metadata_address_inside_an_allowed_range_is_cut_out_of_it(cidr):
    [rule] = _egress_with({"to": [{"ipBlock": {"cidr": cidr}}], "ports": HTTPS})[
        "spec"]["egress"][2:]
    [peer] = rule["to"]
    network = ipaddress.ip_network(cidr, strict=False)
    expected = [m for m in METADATA if ipaddress.ip_network(m).version == network.version
                and ipaddress.ip_network(m).subnet_of(network)]
    assert sorted(peer["ipBlock"].get("except", [])) == sorted(expected)
    # What the API server checks: each except a strict subset of the cidr.
    for excepted in peer["ipBlock"].get("except", []):
        inner = ipaddress.ip_network(excepted)
        assert inner.subnet_of(network) and inner != network


def test_a_users_own_excepts_are_kept_beside_the_metadata_ones():
    [rule] = _egress_with({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": [
        "10.0.0.0/8", "169.254.169.254/32"]}}], "ports": HTTPS})["spec"]["egress"][2:]
    assert rule["to"][0]["ipBlock"]["except"] == ["10.0.0.0/8", "169.254.169.254/32",
                                                  "100.100.100.200/32"]
    assert rule["ports"] == HTTPS


def test_in_cluster_destinations_pass_through_unchanged():
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nexus"}}}
    [rule] = _egress_with({"to": [peer], "ports": [{"port": 8081}]})["spec"]["egress"][2:]
    assert rule == {"to": [peer], "ports": [{"port": 8081}]}


@pytest.mark.parametrize("rule,message", [
    ({"ports": HTTPS, "to": []}, "/networkPolicy/agents/egress/0/to"),  # the schema: minItems
    ({"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}]}, "a cloud metadata address"),
    ({"to": [{"ipBlock": {"cidr": "fd00:ec2::254/128"}}]}, "a cloud metadata address"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.300/32"}}]}, "over 255"),
    ({"to": [{"ipBlock": {"cidr": "fd00::ec2::1/128"}}]}, "a double colon twice"),
    ({"to": [{"ipBlock": {"cidr": "10.0.0.0"}}]}, "not a CIDR"),
])
def test_a_rule_that_could_reach_metadata_or_is_not_an_address_fails_the_render(rule, message):
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmValuesError),
                       match=re.escape(message)):
        render_files(_with(networkPolicy={"agents": {"egress": [rule]}}))


def test_every_agent_policy_is_valid_kubernetes_with_broad_ranges():
    policy = _egress_with({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}},
                                  {"ipBlock": {"cidr": "::/0"}}], "ports": HTTPS})
    kubernetes_validate.validate(policy, "1.30.0", strict=True)
    peers = [p for rule in policy["spec"]["egress"] for p in rule["to"]]
    blocked = {m for p in peers if "ipBlock" in p for m in p["ipBlock"].get("except", [])}
    assert blocked == set(METADATA)


# -- the web's NetworkPolicy ------------------------------------------------------------------

INGRESS_POD = {"app.kubernetes.io/name": "ingress-nginx"}
PROMETHEUS_POD = {"app.kubernetes.io/name": "prometheus"}
AGENT_POD = {"app.kubernetes.io/managed-by": "ci-autoscaler"}


def test_the_web_admits_the_ingress_controller_and_prometheus_and_not_the_agents():
    policy = one(render("default"), "NetworkPolicy", "web")
    assert [r["ports"] for r in policy["spec"]["ingress"]] == [
        [{"port": "http", "protocol": "TCP"}], [{"port": "admin", "protocol": "TCP"}]]
    # the webhooks' port for the Ingress controller; the admin port (/metrics, /status) for
    # Prometheus; neither for the other
    assert _admitted(policy, "ingress-nginx", INGRESS_POD, "http")
    assert not _admitted(policy, "ingress-nginx", INGRESS_POD, "admin")
    assert _admitted(policy, "monitoring", PROMETHEUS_POD, "admin")
    assert not _admitted(policy, "monitoring", PROMETHEUS_POD, "http")
    assert not _admitted(policy, "ingress-nginx", {"app": "something-else"})
    assert not _admitted(policy, "default", INGRESS_POD)
    for labels in (AGENT_POD, INGRESS_POD, PROMETHEUS_POD, {}):
        assert not _admitted(policy, AGENTS_NAMESPACE, labels)
        assert not _admitted(policy, NAMESPACE, labels)


def test_even_a_selector_of_every_namespace_leaves_the_agent_namespace_out():
    everyone = {"namespaceSelector": {}}
    values = _with(networkPolicy={"web": {
        "ingressController": {"namespaceSelector": {}, "podSelector": {}},
        "extraFrom": [everyone, {"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "Exists"}]}}]}})
    policy = one(_objects(values), "NetworkPolicy", "web")
    kubernetes_validate.validate(policy, "1.30.0", strict=True)
    assert _admitted(policy, "anything", {})
    for labels in (AGENT_POD, INGRESS_POD, {}):
        assert not _admitted(policy, AGENTS_NAMESPACE, labels)


def test_a_selector_of_your_own_replaces_the_default_one_instead_of_narrowing_it():
    # Helm merges a map given in values into values.yaml's map key by key (helm
    # pkg/chartutil/coalesce.go): a Traefik selected by its own namespace and pod labels kept
    # the defaults' kubernetes.io/metadata.name=ingress-nginx and app.kubernetes.io/name=
    # ingress-nginx beside them, so the selectors (ANDed by the API server) matched no pod and
    # every webhook timed out; the same for Prometheus and for the agents' DNS pods.
    values = _with(networkPolicy={
        "web": {"ingressController": {"namespaceSelector": {"matchLabels": {"role": "edge"}},
                                      "podSelector": {"matchLabels": {"app": "traefik"}}},
                "prometheus": {"namespaceSelector": {"matchExpressions": [
                    {"key": "team", "operator": "In", "values": ["observability"]}]}}},
        "agents": {"dns": {"namespaceSelector": {"matchLabels": {"dns": "cluster"}},
                           "podSelector": {"matchLabels": {"app": "coredns"}}}}})
    objs = _objects(values)
    web = one(objs, "NetworkPolicy", "web")
    kubernetes_validate.validate(web, "1.30.0", strict=True)
    assert _admitted(web, "traefik", {"app": "traefik"}, "http", {"role": "edge"})
    assert not _admitted(web, "traefik", {"app": "other"}, "http", {"role": "edge"})
    assert _admitted(web, "obs", {"app.kubernetes.io/name": "prometheus"}, "admin",
                     {"team": "observability"})
    assert not _admitted(web, AGENTS_NAMESPACE, {"app": "traefik"}, "http", {"role": "edge"})
    dns = one(objs, "NetworkPolicy", "agents")["spec"]["egress"][0]["to"][0]
    assert dns == {"namespaceSelector": {"matchLabels": {"dns": "cluster"}},
                   "podSelector": {"matchLabels": {"app": "coredns"}}}
    # Only what is given replaces: the defaults stay where nothing is, and changing the
    # default label's value is the operator's own selector.
    default_web = one(_objects(_with(networkPolicy={"web": {"ingressController": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}}})),
        "NetworkPolicy", "web")
    assert _admitted(default_web, "traefik", {"app.kubernetes.io/name": "ingress-nginx"}, "http")
    assert not _admitted(default_web, "traefik", {"app": "traefik"}, "http")


def test_more_sources_for_the_admin_port_get_it_and_never_the_agents():
    proxy = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tools"}}}
    policy = one(_objects(_with(networkPolicy={"web": {"adminFrom": [proxy]}})),
                 "NetworkPolicy", "web")
    kubernetes_validate.validate(policy, "1.30.0", strict=True)
    assert _admitted(policy, "tools", {}, "admin") and not _admitted(policy, "tools", {}, "http")
    everyone = _with(networkPolicy={"web": {"adminFrom": [{"namespaceSelector": {}}]}})
    policy = one(_objects(everyone), "NetworkPolicy", "web")
    assert not _admitted(policy, AGENTS_NAMESPACE, AGENT_POD, "admin")
    with pytest.raises(helm_python.HelmValuesError, match="namespaceSelector"):
        render_files(_with(networkPolicy={"web": {"adminFrom": [{"podSelector": {}}]}}))


def test_the_bundled_jenkins_may_post_its_notifications_to_the_web():
    objs = render("jenkins")
    policy = one(objs, "NetworkPolicy", "web")
    jenkins = one(objs, "StatefulSet", "jenkins")["spec"]["template"]["metadata"]["labels"]
    assert _admitted(policy, NAMESPACE, jenkins)
    assert not _admitted(policy, "ci-agents", jenkins)


def test_a_web_source_without_a_namespace_selector_is_refused():
    with pytest.raises(helm_python.HelmValuesError, match="namespaceSelector"):
        render_files(_with(networkPolicy={"web": {"extraFrom": [{"podSelector": {}}]}}))


# -- Redis maxmemory --------------------------------------------------------------------------

def _maxmemory(values: dict[str, Any]) -> int:
    redis = one(_objects(values), "StatefulSet", "redis")["spec"]["template"]["spec"][
        "containers"][0]
    found = re.search(r"--maxmemory (\d+) --maxmemory-policy noeviction", " ".join(redis["args"]))
    assert found, redis["args"]
    return int(found[1])


@pytest.mark.parametrize("limit,percent,expected", [
    ("512Mi", None, 512 * 2**20 * 80 // 100),  # the defaults
    ("1Gi", None, 2**30 * 80 // 100),
    ("1.5Gi", 50, int(1.5 * 2**30) // 2),
    ("500M", 90, 500_000_000 * 90 // 100),
    ("536870912", 75, 536870912 * 75 // 100),
])
def test_redis_maxmemory_is_below_its_memory_limit(limit, percent, expected):
    redis = {"resources": {"limits": {"memory": limit}}}
    if percent:
        redis["maxmemoryPercent"] = percent
    maxmemory = _maxmemory(_with(redis=redis))
    assert maxmemory == expected < _quantity_bytes(limit)


def _quantity_bytes(quantity: str) -> int:
    """A memory quantity in bytes (the reference for the chart's own parse)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()
    return int(float(number) * units.get(unit, 1))


def test_redis_maxmemory_percent_is_bounded_by_the_schema():
    with pytest.raises(helm_python.HelmValuesError, match="/redis/maxmemoryPercent"):
        render_files(_with(redis={"maxmemoryPercent": 100}))

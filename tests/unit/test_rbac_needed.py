"""The chart's RBAC grants nothing the code does not ask: every right of workers.core.rbac.RIGHTS
(the chart's Role and ClusterRole, held equal to it by tests/integration/test_helm_chart.py) is
needed by some Kubernetes API request the worker, the reconcile loop or `check-config --live`
makes. kmock refuses a request no right grants (tests.support.kube_rbac), which catches a right
missing; this catches one left over (a right kept after the call that needed it changed, such
as secrets update once the Secret was patched rather than replaced).

The requests are read from the source, as the official client makes them: each call of a
kubernetes.client API method on an object of that API class (assigned from its constructor or
annotated with it), its HTTP method and path from the client's own serializer, and the verb
and resource the API server reads from those (tests.support.kube_rbac.request_info, after
requestinfo.go). A list function handed to the watch loop (kube_snapshot._list_watch) is
called with watch=True too. A namespaced path is asked in the agent namespace (the only one
the code names); a request a namespaced right (the Role) grants does not need a cluster one.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import kubernetes.client

from tests.support.kube_rbac import RequestInfo, allowed, request_info
from workers.core.rbac import RIGHTS, Right

ROOT = Path(__file__).resolve().parents[2]
AGENTS = "ci-agents"
_SOURCES = sorted(p for p in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "service").rglob("*.py")]
                  if "kubernetes" in p.read_text(encoding="utf-8"))  # the others use no API class


def _imported_api_classes() -> dict[str, type]:
    """The API classes the code imports (kubernetes.client loads a class's module when it is
    asked for: all of them took 20 s)."""
    names = set()
    for path in _SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "kubernetes.client":
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Attribute) and ast.unparse(node.value).endswith("client"):
                names.add(node.attr)  # kubernetes.client.CoreV1Api(...)
    return {name: getattr(kubernetes.client, name) for name in names
            if name.endswith("Api") and inspect.isclass(getattr(kubernetes.client, name, None))}


_API_CLASSES = _imported_api_classes()
_WATCH_LOOPS = {"_list_watch"}  # workers/adapters/kube_snapshot.py: lists, then watch=True
# Granted whether the code asks them or not: the rights issue 6 lists "exactly" (a Role: pods
# create, get, list, watch, delete, pods/log get; a ClusterRole: nodes get, list, watch,
# metrics.k8s.io nodes and pods get, list), and pods get, list, watch cluster-wide, the
# deviation its resolution records (placement reads every pod's requests).
_ISSUE_6 = {*(Right("", "pods", v, namespaced=True)
              for v in ("create", "get", "list", "watch", "delete")),
            Right("", "pods/log", "get", namespaced=True),
            *(Right("", "nodes", v) for v in ("get", "list", "watch")),
            *(Right("metrics.k8s.io", r, v) for r in ("nodes", "pods") for v in ("get", "list")),
            *(Right("", "pods", v) for v in ("get", "list", "watch"))}


def _api_class(node: ast.AST | None) -> str | None:
    """The API class a constructor call or an annotation names, if one."""
    if isinstance(node, ast.Call):
        node = node.func
    name = node.id if isinstance(node, ast.Name) else (
        node.attr if isinstance(node, ast.Attribute) else None)
    return name if name in _API_CLASSES else None


def _bindings(scope: ast.AST) -> dict[str, str]:
    """Source text of a target (`api`, `self._core`) -> the API class bound to it in scope."""
    bound: dict[str, str] = {}
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts)
                         if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                         else [(target, node.value)])
                for t, v in pairs:
                    if cls := _api_class(v):
                        bound[ast.unparse(t)] = cls
        elif isinstance(node, ast.arg) and (cls := _api_class(node.annotation)):
            bound[node.arg] = cls
    return bound


def _calls(path: Path) -> list[tuple[str, str, list[str], bool]]:
    """(API class, method, constant string arguments after it, handed to a watch loop) of
    every API method the file calls or hands on."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    whole = {k: v for k, v in _bindings(tree).items() if k.startswith("self.")}
    found = []
    scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and isinstance(parents.get(n), (ast.Module, ast.ClassDef))]
    for scope in scopes:
        bound = whole | _bindings(scope)
        for node in ast.walk(scope):
            if not isinstance(node, ast.Attribute):
                continue
            cls = bound.get(ast.unparse(node.value))
            if cls is None or not hasattr(_API_CLASSES[cls], node.attr):
                continue
            parent = parents[node]
            after: list[str] = []
            watched = False
            if isinstance(parent, ast.Call) and node in parent.args:  # api_call(what, fn, ...)
                rest = parent.args[parent.args.index(node) + 1:]
                after = [a.value for a in rest if isinstance(a, ast.Constant)
                         and isinstance(a.value, str)]
                func = parent.func
                watched = (func.attr if isinstance(func, ast.Attribute)
                           else getattr(func, "id", "")) in _WATCH_LOOPS
            elif isinstance(parent, ast.Call) and parent.func is node:
                after = [a.value for a in parent.args if isinstance(a, ast.Constant)
                         and isinstance(a.value, str)]
            found.append((cls, node.attr, after, watched))
    return found


def _requests() -> list[tuple[str, RequestInfo]]:
    """(where, the API server's reading) of every request the code makes."""
    out = []
    for path in _SOURCES:
        for cls, method, after, watched in _calls(path):
            source = inspect.getsource(getattr(_API_CLASSES[cls], f"_{method}_serialize"))
            http, template = re.search(r"method='(\w+)',\s*resource_path='([^']+)'",
                                       source).groups()
            params = re.findall(r"\{(\w+)\}", template)
            values = iter(after)
            custom = {p: next(values) for p in params if p in ("group", "version", "plural")}
            # a namespace object read is the agent namespace's (its Pod Security labels)
            ours = ("namespace",) + (("name",) if template.endswith("/namespaces/{name}") else ())
            url = template.format(**{p: custom.get(p) or (AGENTS if p in ours else "x")
                                     for p in params})
            where = f"{path.relative_to(ROOT)}: {cls}.{method}"
            out.append((where, request_info(http, url, {})))
            if watched:
                out.append((where + " (watch)", request_info(http, url, {"watch": "true"})))
    return out


def _needed() -> dict[Right, list[str]]:
    needed: dict[Right, list[str]] = {}
    for where, info in _requests():
        if allowed(info, [], AGENTS):
            continue  # every authenticated user's (a SelfSubjectAccessReview): no right needed
        granting = [r for r in RIGHTS if allowed(info, [r], AGENTS)]
        assert granting, f"{where}: no right of the chart grants {info}"
        own = [r for r in granting if r.namespaced] or granting
        for right in own:
            needed.setdefault(right, []).append(where)
    return needed


def test_the_code_makes_the_kubernetes_requests_its_adapters_hold():
    """The reading of the source finds the requests the adapters are known to make (a reading
    that found none would pass the test below for any chart)."""
    seen = {(i.verb, i.group, i.resource + (f"/{i.subresource}" if i.subresource else ""),
             bool(i.namespace)) for _, i in _requests()}
    assert {("create", "", "pods", True), ("watch", "", "pods", False),
            ("list", "metrics.k8s.io", "nodes", False), ("get", "", "persistentvolumes", False),
            ("patch", "", "secrets", True), ("get", "node.k8s.io", "runtimeclasses", False),
            ("create", "authorization.k8s.io", "selfsubjectaccessreviews", False)} <= seen


def test_the_issue_rights_are_the_charts():
    """The allowance above names rights the chart has (a typo there would allow nothing)."""
    assert _ISSUE_6 <= set(RIGHTS)


def test_every_right_the_chart_grants_is_needed_by_a_request():
    needed = _needed()
    unused = [str(r) + (" (Role)" if r.namespaced else " (ClusterRole)")
              for r in RIGHTS if r not in needed and r not in _ISSUE_6]
    assert unused == [], f"granted, never asked: {unused}"

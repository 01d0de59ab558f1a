"""The live checks: the real Redis, Jenkins and cluster against the configuration, for
`ci-autoscaler check-config --live FILE` and, as warnings, the start-up of the worker and of the
reconcile loop. Each check is a function returning one line per problem (naming the job,
parameter, verb or namespace), never a secret:

- every routed job exists, can be built and declares the parameters we pass;
- the Jenkins user can register an agent and read its secret (a probe node, deleted after);
- RBAC allows every right the chart grants (workers.core.rbac), by SelfSubjectAccessReview;
- the agent namespace exists and its Pod Security level admits every template's pod;
- every PersistentVolumeClaim a template mounts exists there;
- every RuntimeClass a template's pods name exists;
- every template's range meets its LimitRanges' per-container max and min;
- metrics-server answers;
- Redis evicts no key at maxmemory (maxmemory-policy noeviction; workers.checks.redis_eviction);
- and, as a warning that fails nothing, what Redis may lose of what we answered across its own
  restart or crash (appendonly, appendfsync; workers.checks.redis_durability).
"""

import logging
import secrets
from dataclasses import dataclass, field

import redis
from kubernetes.client import ApiClient

from workers.config import pod_schema
from workers.adapters import kube_access, redis_connect
from workers.adapters.jenkins import JenkinsAdapter
from workers.adapters.kube import load_api_client
from workers.checks import redis_durability, redis_eviction
from workers.config.config_file import FileConfig
from workers.config.settings import Settings
from workers.core.errors import CIAutoscalerError
from workers.core.jenkins_jobs import JobProblem, dropped, refusal
from workers.core.limit_range_sizing import unmet, unmet_fixed, unmet_pod, within
from workers.core.limit_ranges import container_extremes, pod_extremes
from workers.core import runtime_class
from workers.core.pod_security import ENFORCE_LABEL, Level, violations
from workers.core.ports import Jenkins
from workers.core.ratio_limits import unrequested_ratios, unsummed_pod_bounds
from workers.core.rbac import RIGHTS, Right
from workers.core.redis_eviction import FINE as REDIS_FINE

log = logging.getLogger("ci_autoscaler.checks.live")
PROBE_NODE_PREFIX = "cia-check-"
# The default REDIS_URL (127.0.0.1:6379) is no Redis of the service's where check-config
# --live is run before `helm install` (README), nor reachable from there after: not checked.
REDIS_UNNAMED = "Redis not checked: neither REDIS_URL nor REDIS_SENTINELS is set"
PROBE_REMOTE_FS = "/home/jenkins/agent"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what was found well, one phrase each
    notes: list[str] = field(default_factory=list)  # what was not checked, and why
    warnings: list[str] = field(default_factory=list)  # risks, which fail nothing


def jenkins_jobs(jenkins: Jenkins, config: FileConfig) -> list[str]:
    """Every routed job exists, can be built, declares CI_AUTOSCALER_AGENT and
    CI_AUTOSCALER_BUILD_KEY, and declares every parameter its routes pass (size hints aside)."""
    passed: dict[str, set[str]] = {}
    for route in config.routes:
        passed.setdefault(route.job, set()).update(route.parameters)
    problems = []
    for job in sorted(passed):
        try:
            definition = jenkins.job_definition(job)
        except CIAutoscalerError as err:
            problems.append(f"job {job!r}: cannot be read: {err}")
            continue
        refused = refusal(job, definition)
        if refused is not None and refused.problem is JobProblem.UNDECLARED:
            problems += [f"job {job!r}: does not declare the parameter {name}, which "
                         "ci-autoscaler passes to every build" for name in refused.parameters]
        elif refused is not None:
            problems.append(f"job {job!r}: {refused.reason}")
            continue
        assert definition is not None  # refusal() says so
        if definition.name != job:
            problems.append(
                f"job {job!r}: Jenkins names it {definition.name!r}; write it so: the names "
                "Jenkins gives back (queue items, runs, notifications) are compared with the "
                "route's as written")
        problems += [f"job {job!r}: does not declare the parameter {name}, which its route "
                     "passes: Jenkins drops it without a word"
                     for name in dropped(definition, passed[job])]
    return problems


def jenkins_agents(jenkins: Jenkins, *, name: str | None = None, tries: int = 2) -> list[str]:
    """Register a probe agent (`name`, or a fresh one), read its secret (never shown), delete
    it: what every provision does, with the permissions Agent/Create, Agent/Connect and
    Agent/Delete. A probe that vanished before its secret was read (a reconcile pass deletes
    our agents that have no build) is tried again with a new name, `tries` times in all."""
    name = name or PROBE_NODE_PREFIX + secrets.token_hex(4)
    try:
        jenkins.ensure_node(name, label=name, remote_fs=PROBE_REMOTE_FS)
    except CIAutoscalerError as err:
        return [f"Jenkins: cannot register an agent (Agent/Create): {err}"]
    problems = []
    try:
        if not jenkins.agent_secret(name):
            problems.append(f"Jenkins: agent {name} has no secret to connect with")
    except CIAutoscalerError as err:
        if tries > 1 and not _still_there(jenkins, name):
            return jenkins_agents(jenkins, tries=tries - 1)
        problems.append(f"Jenkins: cannot read an agent's secret (Agent/Connect): {err}")
    try:
        jenkins.delete_node(name)
    except CIAutoscalerError as err:
        problems.append(f"Jenkins: cannot delete an agent (Agent/Delete): {err}; delete node "
                        f"{name} by hand")
    return problems


def _still_there(jenkins: Jenkins, name: str) -> bool:
    try:
        return name in jenkins.list_agents()
    except CIAutoscalerError:
        return True  # cannot tell: report what failed


def _where(right: Right, namespace: str) -> str:
    if right.agent_namespace_only:
        return f"on namespace {namespace}"
    return f"in namespace {namespace}" if right.namespaced else "cluster-wide"


def rbac(api_client: ApiClient, namespace: str) -> list[str]:
    """Every right the chart grants (workers.core.rbac), asked of the API server."""
    problems = []
    for right in RIGHTS:
        try:
            ok, _ = kube_access.allowed(api_client=api_client, right=right, namespace=namespace)
        except CIAutoscalerError as err:
            problems.append(f"RBAC: cannot ask whether {right} is allowed: {err}")
            continue
        if not ok:
            problems.append(f"RBAC: {right} is denied {_where(right, namespace)}")
    return problems


def agent_namespace(api_client: ApiClient, namespace: str, config: FileConfig) -> list[str]:
    """The agent namespace exists, and the Pod Security level it enforces admits the pod of
    every template (a namespace without the label enforces nothing: privileged)."""
    try:
        labels = kube_access.namespace_labels(api_client=api_client, name=namespace)
    except CIAutoscalerError as err:
        return [f"namespace {namespace}: cannot be read: {err}"]
    if labels is None:
        return [f"namespace {namespace}: does not exist (AGENT_NAMESPACE)"]
    raw = labels.get(ENFORCE_LABEL) or Level.PRIVILEGED
    try:
        level = Level(raw)
    except ValueError:
        return [f"namespace {namespace}: unknown Pod Security level {raw!r} in {ENFORCE_LABEL}"]
    problems = []
    for name, template in sorted(config.templates.items()):
        found = violations(pod_schema.sample_manifest(name, template), level)
        if found:
            problems.append(f"namespace {namespace}: Pod Security level {level} refuses the pod "
                            f"of template {name!r}: {'; '.join(found)}")
    return problems


def claims(api_client: ApiClient, namespace: str, config: FileConfig) -> list[str]:
    """Every PersistentVolumeClaim a template's pod mounts (its volumes, workspace volume or
    podSpecPatch) exists in the agent namespace: kube-scheduler leaves a pod whose claim is
    missing Unschedulable (VolumeBinding: persistentvolumeclaim "NAME" not found)."""
    mounted: dict[str, list[str]] = {}
    for name, template in sorted(config.templates.items()):
        for volume in pod_schema.sample_manifest(name, template)["spec"].get("volumes") or ():
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and name not in mounted.setdefault(claim, []):
                mounted[claim].append(name)
    problems = []
    for claim, templates in sorted(mounted.items()):
        try:
            exists = kube_access.claim_exists(api_client=api_client, namespace=namespace,
                                              name=claim)
        except CIAutoscalerError as err:
            problems.append(f"namespace {namespace}: claim {claim} cannot be read: {err}")
            continue
        if not exists:
            which = ", ".join(repr(t) for t in templates)
            problems.append(f"namespace {namespace}: claim {claim}, which template"
                            f"{'s' if len(templates) > 1 else ''} {which} mount"
                            f"{'' if len(templates) > 1 else 's'}, does not exist: its pods "
                            f"would wait Unschedulable (persistentvolumeclaim \"{claim}\" "
                            "not found)")
    return problems


def runtime_classes(api_client: ApiClient, config: FileConfig) -> list[str]:
    """Every RuntimeClass a template's podSpecPatch names exists: the API server's
    RuntimeClass admission refuses a pod naming one that does not (403, pod rejected:
    RuntimeClass "NAME" not found), so every build of such a template failed at its pod."""
    named: dict[str, list[str]] = {}
    for name, template in sorted(config.templates.items()):
        if (wanted := runtime_class.name(template)) is not None:
            named.setdefault(wanted, []).append(name)
    problems = []
    for wanted, templates in sorted(named.items()):
        which, many = ", ".join(repr(t) for t in templates), len(templates) > 1
        try:
            exists = kube_access.runtime_class_exists(api_client=api_client, name=wanted)
        except CIAutoscalerError as err:
            problems.append(f"runtime class {wanted} cannot be read: {err}")
            continue
        if not exists:
            problems.append(f"runtime class {wanted}, which template{'s' if many else ''} "
                            f"{which} name{'' if many else 's'}, does not exist: the API "
                            f"server would refuse its pods (RuntimeClass \"{wanted}\" not "
                            "found)")
    return problems


def limit_ranges(api_client: ApiClient, namespace: str, config: FileConfig) -> list[str]:
    """Every template's range meets the agent namespace's per-container and per-pod
    LimitRange max and min (core.limit_range_sizing: sizing keeps the build within them where
    the range can), and so do its ephemeralStorage and extended resources, which nothing
    narrows: one that cannot has every pod refused, each build failing as pod_refused."""
    try:
        items = kube_access.limit_ranges(api_client=api_client, namespace=namespace)
    except CIAutoscalerError as err:
        return [f"namespace {namespace}: limit ranges cannot be read: {err}"]
    most, least = container_extremes(items)
    pod_most, pod_least = pod_extremes(items)
    problems = []
    for name, template in sorted(config.templates.items()):
        found = [f"per-container {bound}" for bound in unmet(template, most, least)] + [
            f"per-pod {bound}" for bound in unmet_pod(within(template, most, least),
                                                      pod_most, pod_least)]
        for bound in found:
            problems.append(f"namespace {namespace}: the LimitRange {bound} is beyond what "
                            f"template {name!r} can be sized to (its min..max, with the "
                            "agent's share): the API server refuses its every pod, and each "
                            "build fails (pod_refused)")
        fixed = [f"per-container {bound}" for bound in unmet_fixed(template, most, least)] + [
            f"per-pod {bound}" for bound in unmet_fixed(template, pod_most, pod_least)]
        for bound in fixed:
            problems.append(f"namespace {namespace}: the LimitRange {bound} is not met by "
                            f"what template {name!r} asks (ephemeralStorage, resources): the "
                            "API server refuses its every pod, and each build fails "
                            "(pod_refused)")
        manifest = pod_schema.sample_manifest(name, template)
        for ratio in unrequested_ratios(manifest, items):
            problems.append(f"namespace {namespace}: the LimitRange per-container {ratio} "
                            f"refuses every pod of template {name!r}: a container asking "
                            "none of it is refused, and no LimitRange gives it a "
                            "default request and limit; each build fails (pod_refused)")
        for bound in unsummed_pod_bounds(manifest, items):
            problems.append(f"namespace {namespace}: the LimitRange per-pod {bound} refuses "
                            f"every pod of template {name!r}: the API server finds no sum "
                            "of it to check; each build fails (pod_refused)")
    return problems


def metrics_server(api_client: ApiClient) -> list[str]:
    """metrics.k8s.io answers with node usage (without it placement counts requests only)."""
    try:
        count = kube_access.node_metrics_count(api_client=api_client)
    except CIAutoscalerError as err:
        return [f"metrics-server: metrics.k8s.io does not answer: {err}"]
    return [] if count else ["metrics-server: metrics.k8s.io reports no node"]


def redis_policy(settings: Settings) -> list[str] | None:
    """The environment's Redis evicts no key at maxmemory (workers.checks.redis_eviction):
    its problem, if any; None when it refuses INFO. One that does not answer is a problem."""
    connection = settings.redis_client(socket_timeout=settings.redis_timeout_seconds,
                                       socket_connect_timeout=settings.redis_timeout_seconds)
    try:
        return redis_eviction.problems(connection)
    except redis.RedisError as err:  # its type only (a URL's password never shows), or the
        # sentinels' reasons by address
        return [f"Redis: cannot read its maxmemory-policy (INFO): {redis_connect.shown(err)}"]
    finally:
        connection.close()


def redis_risks(settings: Settings) -> list[str]:
    """What the environment's Redis may lose of what we answered (workers.checks.
    redis_durability); [] when it cannot be read (a Redis that does not answer is told by
    redis_policy already)."""
    connection = settings.redis_client(socket_timeout=settings.redis_timeout_seconds,
                                       socket_connect_timeout=settings.redis_timeout_seconds)
    try:
        return redis_durability.risks(connection,
                                      replicated=redis_durability.replicated(settings))
    except redis.RedisError:
        return []
    finally:
        connection.close()


def run(settings: Settings, config: FileConfig) -> Report:
    """Every live check against the environment's Redis, Jenkins and cluster."""
    report = Report()
    if not settings.redis_named:
        report.notes.append(REDIS_UNNAMED)
    else:
        if (found := redis_policy(settings)) is not None:
            _step(report, found, REDIS_FINE)
        report.warnings += redis_risks(settings)
    jenkins, missing = _jenkins_of(settings)
    report.problems += missing
    if jenkins is not None:
        _step(report, jenkins_jobs(jenkins, config),
              f"{len({r.job for r in config.routes})} routed jobs declare our parameters")
        _step(report, jenkins_agents(jenkins), "Jenkins agents can be registered")
    try:
        api_client = load_api_client(kubeconfig=settings.kubeconfig)
    except CIAutoscalerError as err:
        report.problems.append(str(err))
        return report
    with api_client:
        namespace = settings.agent_namespace
        _step(report, rbac(api_client, namespace), f"{len(RIGHTS)} RBAC rights allowed")
        _step(report, agent_namespace(api_client, namespace, config),
              f"namespace {namespace} admits every template's pod")
        _step(report, claims(api_client, namespace, config),
              f"namespace {namespace} has the claims the templates mount")
        if any(runtime_class.name(t) for t in config.templates.values()):
            _step(report, runtime_classes(api_client, config),
                  "the runtime classes the templates name exist")
        _step(report, limit_ranges(api_client, namespace, config),
              f"namespace {namespace}'s LimitRanges admit every template's size")
        _step(report, metrics_server(api_client), "metrics-server answers")
    return report


def _step(report: Report, problems: list[str], fine: str) -> None:
    report.problems += problems
    if not problems:
        report.checked.append(fine)


def _jenkins_of(settings: Settings) -> tuple[Jenkins | None, list[str]]:
    missing = [f"{name}: required for the Jenkins checks" for name, value in (
        ("JENKINS_URL", settings.jenkins_url), ("JENKINS_USER", settings.jenkins_user),
        ("JENKINS_API_TOKEN", settings.jenkins_api_token)) if not value]
    if missing:
        return None, missing
    assert settings.jenkins_api_token is not None
    return JenkinsAdapter(url=settings.jenkins_url, user=settings.jenkins_user,
                          token=settings.jenkins_api_token.get_secret_value(),
                          installation=settings.installation), []


def log_report(report: Report, *, component: str) -> None:
    """Each problem as a warning of `component` (the start-up of the worker and the reconcile
    loop), or one line saying all passed."""
    for note in report.notes:
        log.info(note, extra={"component": component})
    for risk in report.warnings:
        log.warning("start-up check found a risk", extra={"component": component, "risk": risk})
    for problem in report.problems:
        log.warning("start-up check found a problem",
                    extra={"component": component, "problem": problem})
    if not report.problems:
        log.info("start-up checks passed", extra={"component": component,
                                                  "checked": report.checked})

"""What `check-config` warns about in a file that loads: things the file cannot be refused
for, because they depend on the cluster, but that break builds there. A template whose pod
needs a Pod Security level below `restricted` (its namespace must allow that level), a claim
that pods on several nodes would share though it may attach to one node only, an env name
only a Kubernetes of 1.32 or later takes, a folder job written as a URL path, a label on a
parent no route names (its children do not take it), and pod (anti-)affinity or a topology
spread that placement does not count.
Each warning names the file, the line and the field."""

import re
from pathlib import Path

import yaml

from workers.config.config_file import FileConfig, _problem
from workers.core import pod_anti_affinity
from workers.core.claims import shared_claims
from workers.core.pod_security import ENFORCE_LABEL, Level, required_level, violations
from workers.config.pod_schema import sample_manifest

SHOWN_VIOLATIONS = 3  # the first few rules a template's pod breaks, named in its warning


def _pod_security(config: FileConfig) -> list[tuple[tuple[str | int, ...], str]]:
    found = []
    for name, template in config.templates.items():
        pod = sample_manifest(name, template)
        level = required_level(pod)
        if level is Level.RESTRICTED:
            continue
        broken = violations(pod, Level.RESTRICTED if level is Level.BASELINE else Level.BASELINE)
        more = f" (and {len(broken) - SHOWN_VIOLATIONS} more)" \
            if len(broken) > SHOWN_VIOLATIONS else ""
        found.append((("templates", name), (
            f"its pods need a namespace whose Pod Security level is {level} "
            f"({ENFORCE_LABEL}: {level}, or no label); a namespace enforcing a stricter level "
            f"refuses them (403): {'; '.join(broken[:SHOWN_VIOLATIONS])}{more}")))
    return found


def _folder_jobs(config: FileConfig) -> list[tuple[tuple[str | int, ...], str]]:
    found = []
    for i, route in enumerate(config.routes):
        parts = route.job.split("/")
        if len(parts) >= 3 and "job" in parts[1:-1]:
            found.append((("routes", i, "job"), (
                f"{route.job!r} looks like a URL path: a job in a folder is written "
                f"folder/name ({'/'.join(p for p in parts if p != 'job')!r}?); as it is, "
                "Jenkins is asked for a folder named 'job' and answers 404")))
    return found


def _labelled_parents(config: FileConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """A label on a template no route names whose children do not take it (a template's
    label is its own, as the plugin's inheritFrom: core.templates.NOT_INHERITED): before,
    its last child served the label; now builds Jenkins queues on it get the parent's pods."""
    routed = {route.template for route in config.routes}
    found = []
    for name, template in config.templates.items():
        children = sorted(n for n, t in config.templates.items() if t.inherit == name)
        if template.labels and name not in routed and children:
            found.append((("templates", name, "label"), (
                f"a child template does not take its parent's label (as the plugin's "
                f"inheritFrom): builds Jenkins queues on {template.label!r} get pods of "
                f"{name!r}, which no route names, not of {', '.join(children)}; give the "
                "label to the template meant to serve it")))
    return found


# The env var names every Kubernetes takes (apimachinery IsEnvVarName, and its hasChDirPrefix).
# The load refuses only what the relaxed rule refuses (core.containers.env_names), which the
# API server applies from 1.32 on (KEP-4369, RelaxedEnvironmentVariableValidation: alpha 1.30,
# beta 1.32, GA 1.34); an older one, or one with the gate off, refuses the rest with a 422.
_STRICT_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


def _relaxed_env_names(config: FileConfig) -> list[tuple[tuple[str | int, ...], str]]:
    found = []
    for name, template in config.templates.items():
        envs = [(("templates", name, "env"), template.env)] + [
            (("templates", name, "containers", i, "env"), c.env)
            for i, c in enumerate(template.containers)]
        for loc, env in envs:
            for variable in env:
                if not _STRICT_ENV_NAME.fullmatch(variable) or variable in (".", "..") \
                        or variable.startswith(".."):
                    found.append((loc, (
                        f"{variable!r}: a Kubernetes before 1.32 (or with the feature gate "
                        "RelaxedEnvironmentVariableValidation off) refuses this name, every "
                        "build's pod a 422: letters, digits, '_', '-' and '.', not first a "
                        "digit, nor '..' first")))
    return found


def _placement_blind(config: FileConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """A podSpecPatch's required pod affinity or anti-affinity, or a topology spread that
    must hold (DoNotSchedule): placement counts neither (it reads nodes, not which pods run
    where), so the node it chooses may break it. The pod carries its required node affinity
    to the few candidates placement names (core.pods.candidate_affinity): kube-scheduler
    takes one of them that keeps it, else leaves the pod Unschedulable, and the build is
    placed again elsewhere and then waits as unschedulable; a topology spread is counted
    only over the candidates' domains (nodeAffinityPolicy: Honor, its default: only the
    nodes the pod's node affinity matches are in the skew), so a zone spread may not hold."""
    found = []
    for name, template in config.templates.items():
        patch = template.pod_spec_patch
        affinity = patch.get("affinity") if isinstance(patch.get("affinity"), dict) else {}
        for kind in ("podAffinity", "podAntiAffinity"):
            if kind == "podAntiAffinity" and pod_anti_affinity.counts_all(
                    patch, template.pod_labels):
                continue  # one per node, of the template's own pods: placement counts it
            if isinstance(affinity.get(kind), dict) and \
                    affinity[kind].get("requiredDuringSchedulingIgnoredDuringExecution"):
                found.append((("templates", name, "podSpecPatch", "affinity", kind), (
                    f"placement does not count a required {kind}: kube-scheduler applies it "
                    "only among the nodes placement names for the pod "
                    "(CI_AUTOSCALER_PLACEMENT_CANDIDATES); when none of them keeps it the pod "
                    "is Unschedulable, and the build is placed again elsewhere, then waits "
                    "as unschedulable. A preferred term does not hold builds back")))
        spread = [c for c in patch.get("topologySpreadConstraints") or []
                  if isinstance(c, dict) and c.get("whenUnsatisfiable") == "DoNotSchedule"]
        if spread:
            found.append((("templates", name, "podSpecPatch", "topologySpreadConstraints"), (
                "placement does not count a topology spread; kube-scheduler counts its skew "
                "only over the domains of the nodes placement names for the pod (their "
                "required node affinity, nodeAffinityPolicy: Honor), so a spread over zones "
                "holds only among those; when none keeps it the pod is Unschedulable and "
                "the build placed again elsewhere")))
    return found


def file_warnings(path: str | Path, config: FileConfig) -> list[str]:
    """The warnings for a file that loaded as `config`: "FILE:LINE: field: reason" each."""
    text = Path(path).read_text()
    root = yaml.compose(text)
    found = _pod_security(config) + _folder_jobs(config) + _labelled_parents(config) + \
        _relaxed_env_names(config) + _placement_blind(config) + [
        (c.loc, c.reason) for c in shared_claims(config.templates, config.max_agents)]
    return [_problem(str(path), root, loc, reason) for loc, reason in found]

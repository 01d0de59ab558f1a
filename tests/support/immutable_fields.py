"""What `helm upgrade` cannot change in an object the cluster already has.

Helm patches every object of the release that the new chart renders under the same kind and
name; the API server refuses a patch that changes an immutable field ("field is immutable",
"spec: Forbidden") and the upgrade fails, leaving the release failed. The rules below are the
API server's update validation (kubernetes pkg/apis/*/validation), on the fields as rendered,
with the defaults the API server fills in applied to both sides (a field left out is its
default, not a change):

- apps/v1 Deployment, ReplicaSet, DaemonSet: spec.selector (ValidateDeploymentUpdate,
  ValidateDaemonSetUpdate: ValidateImmutableField).
- StatefulSet: the whole spec but replicas, ordinals, template, updateStrategy,
  revisionHistoryLimit, persistentVolumeClaimRetentionPolicy and minReadySeconds
  (ValidateStatefulSetUpdate: "updates to statefulset spec for fields other than ... are
  forbidden"): selector, serviceName, podManagementPolicy and volumeClaimTemplates whole.
- batch/v1 Job: spec.selector, spec.template, spec.completionMode (ValidateJobSpecUpdate).
- PersistentVolumeClaim: spec but resources.requests.storage, which may only grow
  (ValidatePersistentVolumeClaimUpdate: "spec is immutable after creation except
  resources.requests ..."; "field can not be less than previous value").
- Service: spec.clusterIP, clusterIPs and ipFamilies (ValidateServiceUpdate). One the new
  chart leaves out is kept by the API server (the allocated value is copied over), so a
  headless Service stays headless: counted as a change too, since the chart's wish is lost.
- Secret, ConfigMap with immutable: true: data, stringData, binaryData, and immutable itself
  (ValidateSecretUpdate, ValidateConfigMapUpdate).
- rbac RoleBinding, ClusterRoleBinding: roleRef (ValidateRoleBindingUpdate: "cannot change
  roleRef").
"""

import copy
import re
from decimal import Decimal
from typing import Any

Obj = dict[str, Any]

_SELECTOR_ONLY = ("Deployment", "ReplicaSet", "DaemonSet")
# ValidateStatefulSetUpdate copies these from the old spec before comparing the rest.
_STATEFULSET_MUTABLE = ("replicas", "ordinals", "template", "updateStrategy",
                        "revisionHistoryLimit", "persistentVolumeClaimRetentionPolicy",
                        "minReadySeconds")
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_FACTORS = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
            "Pi": 2**50, "Ei": 2**60}


def key(obj: Obj, namespace: str) -> tuple[str, str, str, str]:
    """How Helm knows an object across releases: API group, kind, namespace and name."""
    group = obj["apiVersion"].rpartition("/")[0]
    meta = obj["metadata"]
    return group, obj["kind"], meta.get("namespace", namespace), meta["name"]


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("8Gi", "500M", 1024) as a number."""
    match = _QUANTITY.match(str(value))
    assert match, f"{value!r} is not a quantity"
    return Decimal(match[1]) * _FACTORS[match[2]]


def _claim_spec(spec: Obj) -> Obj:
    """A PVC spec as the API server stores it: volumeMode defaulted, quantities compared by
    value ("1Gi" equals "1024Mi", as Semantic.DeepEqual has it)."""
    spec = copy.deepcopy(spec)
    spec.setdefault("volumeMode", "Filesystem")
    for part in ("requests", "limits"):
        amounts = spec.get("resources", {}).get(part)
        if amounts:
            spec["resources"][part] = {k: quantity(v) for k, v in amounts.items()}
    return spec


def _claim_template(claim: Obj) -> Obj:
    claim = copy.deepcopy(claim)
    claim["spec"] = _claim_spec(claim.get("spec", {}))
    return claim


def _statefulset_frozen(spec: Obj) -> Obj:
    frozen = {k: v for k, v in spec.items() if k not in _STATEFULSET_MUTABLE}
    frozen.setdefault("podManagementPolicy", "OrderedReady")
    frozen["volumeClaimTemplates"] = [_claim_template(c)
                                      for c in frozen.get("volumeClaimTemplates", [])]
    return frozen


def _differs(old: Obj, new: Obj, fields: tuple[str, ...], where: str) -> list[str]:
    return [f"{where}.{name}: {old.get(name)!r} -> {new.get(name)!r}"
            for name in fields if old.get(name) != new.get(name)]


def immutable_changes(old: Obj, new: Obj) -> list[str]:
    """The immutable fields of `old` (as created) that `new` (the upgrade's object of the same
    kind and name) changes, each as "field: old -> new"; empty when the patch is accepted."""
    kind = old["kind"]
    if new["kind"] != kind:
        return []
    old_spec, new_spec = old.get("spec", {}), new.get("spec", {})
    if kind in _SELECTOR_ONLY:
        return _differs(old_spec, new_spec, ("selector",), "spec")
    if kind == "StatefulSet":
        before, after = _statefulset_frozen(old_spec), _statefulset_frozen(new_spec)
        return _differs(before, after, tuple(sorted(before.keys() | after.keys())), "spec")
    if kind == "Job":
        return _differs(old_spec, new_spec, ("selector", "template", "completionMode"), "spec")
    if kind == "PersistentVolumeClaim":
        return _claim_changes(old_spec, new_spec)
    if kind == "Service":
        return _differs(old_spec, new_spec, ("clusterIP", "clusterIPs", "ipFamilies"), "spec")
    if kind in ("Secret", "ConfigMap") and old.get("immutable"):
        return _differs(old, new, ("immutable", "data", "stringData", "binaryData"), kind)
    if kind in ("RoleBinding", "ClusterRoleBinding"):
        return _differs(old, new, ("roleRef",), kind)
    return []


def _claim_changes(old_spec: Obj, new_spec: Obj) -> list[str]:
    before, after = _claim_spec(old_spec), _claim_spec(new_spec)
    out = []
    old_storage = before.get("resources", {}).get("requests", {}).pop("storage", None)
    new_storage = after.get("resources", {}).get("requests", {}).pop("storage", None)
    if old_storage is not None and (new_storage is None or new_storage < old_storage):
        out.append(f"spec.resources.requests.storage: {old_storage} -> {new_storage} "
                   "(may only grow)")
    out += _differs(before, after, tuple(sorted(before.keys() | after.keys())), "spec")
    return out


def upgrade_breaks(old_objs: list[Obj], new_objs: list[Obj], namespace: str) -> dict[str, list]:
    """For every object in both renders under the same key, its refused changes, by
    "Kind namespace/name"."""
    old_by_key = {key(o, namespace): o for o in old_objs}
    out = {}
    for new in new_objs:
        k = key(new, namespace)
        if k in old_by_key and (changes := immutable_changes(old_by_key[k], new)):
            out[f"{k[1]} {k[2]}/{k[3]}"] = changes
    return out

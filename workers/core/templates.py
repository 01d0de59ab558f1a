"""Template inheritance and raw pod spec overlays, as plain dicts.

`inherit: <parent>` merges the parent template (itself resolved first) under the child, and
`podSpecPatch` is merged into the generated pod spec, both like the Jenkins Kubernetes
plugin's merge: mappings merge key by key, lists of named items (containers, volumes, env,
imagePullSecrets...) merge item by item on their name (volumeMounts on mountPath, ports on
containerPort; an env entry or a volume is replaced whole), any other list is replaced, and a
null value removes the key. Pure."""

from collections.abc import Mapping
from typing import Any

# The key that identifies an item in a list that is merged item by item, per list name;
# lists not named here merge on "name" when every item has one.
MERGE_KEYS = {"volumeMounts": "mountPath", "ports": "containerPort",
              "volumeDevices": "devicePath"}
# Lists whose items a patch's item of the same name replaces whole, as the Kubernetes plugin
# does (PodTemplateUtils.combineEnvVars: a map by name, the child's EnvVar put over the
# parent's; combineVolumes likewise): an env entry's `value` and `valueFrom` exclude each
# other, as a volume's sources do, so merged key by key, a parent's `value: dummy` under a
# child's `valueFrom: {secretKeyRef: ...}` made an entry with both, which the API server
# refuses (422 "may not be specified when `value` is not empty"; "may not specify more than 1
# volume type"), for every build of the template.
REPLACED_ITEMS = frozenset({"env", "volumes"})
# Template fields that a child replaces whole instead of merging (one volume source).
REPLACED_FIELDS = frozenset({"workspaceVolume", "podSpecPatch"})
# Template lists kept as the union of parent and child, in order.
UNION_FIELDS = frozenset({"tolerations", "imagePullSecrets"})


class TemplateError(ValueError):
    """A template that cannot be resolved: `path` is the field at fault (a tuple of keys)."""

    def __init__(self, path: tuple[str | int, ...], reason: str):
        super().__init__(reason)
        self.path = path
        self.reason = reason


def _merge_key(name: str, base: list[Any], patch: list[Any]) -> str | None:
    key = MERGE_KEYS.get(name, "name")
    items = base + patch
    if items and all(isinstance(i, Mapping) and key in i for i in items):
        return key
    return None


def merge(base: Any, patch: Any, name: str = "") -> Any:
    """`patch` merged over `base` (neither is changed)."""
    if isinstance(base, Mapping) and isinstance(patch, Mapping):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key)
            else:
                out[key] = value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(name, base, patch)
        if key is None:
            return list(patch)
        out = list(base)
        where = {item[key]: i for i, item in enumerate(out)}
        for item in patch:
            if item[key] in where:
                # replaced whole, yet a null in it still removes its key ("null removes a
                # key"): `emptyDir: null` beside a child's `nfs:`, the way to re-source an
                # inherited volume while items merged key by key, was kept as a second source
                out[where[item[key]]] = merge({}, item, name) if name in REPLACED_ITEMS \
                    else merge(out[where[item[key]]], item, name)
            else:
                where[item[key]] = len(out)
                out.append(item)
        return out
    return patch


def merge_template(parent: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """A child template over its parent: fields merge as `merge` does, but for the ones
    replaced whole (REPLACED_FIELDS; podSpecPatch: the child's patch merged over the
    parent's) and the lists kept as a union (UNION_FIELDS)."""
    out = dict(parent)
    for key, value in child.items():
        if key not in out or value is None:
            out[key] = value
        elif key == "podSpecPatch" and isinstance(out[key], Mapping) \
                and isinstance(value, Mapping):
            out[key] = merge(out[key], value)
        elif key in REPLACED_FIELDS:
            out[key] = value
        elif key in UNION_FIELDS and isinstance(value, list) and isinstance(out[key], list):
            out[key] = list(out[key]) + [v for v in value if v not in out[key]]
        else:
            out[key] = merge(out[key], value, key)
    return out


# A parent's fields a child does not take. `label`: a child's is its own, as in the Kubernetes
# plugin (PodTemplateUtils.combine: `String label = template.getLabel();`); inherited, every
# child of `maven: {label: maven}` served the label too, and the last one in the file (the
# README's maven-docker) got every build Jenkins queued on `maven`.
NOT_INHERITED = ("inherit", "label")


def resolve_inheritance(templates: Mapping[str, Any]) -> dict[str, Any]:
    """Every template with its `inherit` chain merged in (the parent's own parent first).
    Raises TemplateError for an unknown parent or a cycle."""
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        raw = templates[name]
        parent = raw.get("inherit") if isinstance(raw, Mapping) else None
        if parent is None:
            resolved[name] = raw
            return raw
        if not isinstance(parent, str) or parent not in templates:
            raise TemplateError((name, "inherit"), f"unknown template {parent!r}")
        if parent in chain:
            loop = " -> ".join(chain[chain.index(parent):] + (parent,))
            raise TemplateError((name, "inherit"), f"inheritance loop: {loop}")
        base = resolve(parent, chain + (parent,))
        if not isinstance(base, Mapping):
            resolved[name] = raw
            return raw
        merged = merge_template({k: v for k, v in base.items() if k not in NOT_INHERITED}, raw)
        resolved[name] = merged
        return merged

    return {name: resolve(name, (name,)) for name in templates}


def _own_path(merged: Any, own: Any, path: tuple[str | int, ...]
              ) -> tuple[str | int, ...] | None:
    """The path in `own` (one template's own patch) of the element at `path` of `merged` (the
    patch after inheritance), or None when `own` does not hold that element: a list of named
    items is matched by name (MERGE_KEYS), as `merge` merged it, not by index."""
    out: list[str | int] = []
    parent = ""
    for part in path:
        if isinstance(merged, Mapping) and isinstance(own, Mapping) and part in own:
            merged, own, parent = merged.get(part), own[part], str(part)
            out.append(part)
        elif isinstance(merged, list) and isinstance(own, list) and isinstance(part, int) \
                and part < len(merged):
            item, key = merged[part], MERGE_KEYS.get(parent, "name")
            if isinstance(item, Mapping) and key in item \
                    and all(isinstance(o, Mapping) and key in o for o in own):
                j = next((j for j, o in enumerate(own) if o[key] == item[key]), None)
            else:  # a list replaced whole: the own list is the merged one
                j = part if part < len(own) else None
            if j is None:
                return None
            merged, own = item, own[j]
            out.append(j)
        else:
            return None
    return tuple(out)


def patch_owner(templates: Mapping[str, Any], name: str, merged: Any,
                path: tuple[str | int, ...]) -> tuple[str, tuple[str | int, ...]]:
    """Where the element at `path` of `merged`, template `name`'s patch after inheritance, is
    written: the template of its `inherit` chain, child first, whose own `podSpecPatch` holds
    it, and the path inside that patch. A child's patch is merged over its parents', so the index of
    a named item there is not its index in any one template's text, and an item a parent's
    patch brought is not in the child's text at all (issue 9: "a typo is refused with its
    path"). Unknown: (`name`, `path`) as given. `templates` are the templates as written
    (podSpecPatch parsed), before inheritance."""
    seen: set[str] = set()
    at: Any = name
    while isinstance(at, str) and at in templates and at not in seen:
        seen.add(at)
        raw = templates[at]
        if not isinstance(raw, Mapping):
            break
        own = _own_path(merged, raw.get("podSpecPatch"), path)
        if own is not None:
            return at, own
        at = raw.get("inherit")
    return name, path

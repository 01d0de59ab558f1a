"""The merge of inherited templates and podSpecPatch (core.templates), as the Jenkins
Kubernetes plugin merges: mappings by key, named items by name, other lists replaced."""

import pytest

from workers.config.config_file import parse_file_config
from workers.config.pod_schema import sample_manifest
from workers.core.templates import TemplateError, merge, patch_owner, resolve_inheritance


def test_named_items_merge_by_name_and_new_ones_are_appended():
    base = {"containers": [{"name": "jnlp", "image": "a", "env": [{"name": "X", "value": "1"}]}]}
    patch = {"containers": [{"name": "jnlp", "env": [{"name": "Y", "value": "2"}]},
                            {"name": "maven", "image": "m"}]}
    assert merge(base, patch) == {"containers": [
        {"name": "jnlp", "image": "a", "env": [{"name": "X", "value": "1"},
                                               {"name": "Y", "value": "2"}]},
        {"name": "maven", "image": "m"}]}


def test_volume_mounts_merge_on_mount_path_other_lists_are_replaced_null_removes():
    base = {"volumeMounts": [{"name": "w", "mountPath": "/a"}], "args": ["x"], "tty": True}
    patch = {"volumeMounts": [{"name": "w", "mountPath": "/b"}], "args": ["y"], "tty": None}
    assert merge(base, patch) == {"volumeMounts": [{"name": "w", "mountPath": "/a"},
                                                   {"name": "w", "mountPath": "/b"}],
                                  "args": ["y"]}
    assert base["args"] == ["x"]  # inputs untouched


def test_inheritance_chains_resolve_parent_first():
    out = resolve_inheritance({
        "a": {"cpu": {"min": "1"}, "tolerations": [{"key": "k"}], "env": {"A": "1"}},
        "b": {"inherit": "a", "cpu": {"max": "4"}, "env": {"B": "2"}},
        "c": {"inherit": "b", "tolerations": [{"key": "k"}, {"key": "j"}],
              "workspaceVolume": {"nfs": {"server": "s", "path": "/p"}}}})
    assert out["c"]["cpu"] == {"min": "1", "max": "4"}
    assert out["c"]["env"] == {"A": "1", "B": "2"}
    assert out["c"]["tolerations"] == [{"key": "k"}, {"key": "j"}]
    assert out["c"]["inherit"] == "b" and out["a"] == {
        "cpu": {"min": "1"}, "tolerations": [{"key": "k"}], "env": {"A": "1"}}


def test_an_unknown_parent_names_the_inherit_field():
    with pytest.raises(TemplateError) as err:
        resolve_inheritance({"a": {"inherit": "zz"}})
    assert err.value.path == ("a", "inherit")


def test_a_patch_relaxes_the_hardened_security_context_key_by_key():
    """What a Docker-in-Docker container needs from podSpecPatch: its securityContext merged
    over the hardened one, capabilities removed by null, the other containers untouched."""
    hardened = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    base = {"securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "containers": [{"name": "jnlp", "securityContext": dict(hardened)},
                           {"name": "dind", "securityContext": dict(hardened)}]}
    patch = {"containers": [{"name": "dind", "securityContext": {
        "privileged": True, "allowPrivilegeEscalation": True, "runAsUser": 0,
        "runAsNonRoot": False, "capabilities": None}}]}
    out = merge(base, patch)
    assert out["containers"][1]["securityContext"] == {
        "allowPrivilegeEscalation": True, "privileged": True, "runAsUser": 0,
        "runAsNonRoot": False}
    assert out["containers"][0]["securityContext"] == hardened
    assert out["securityContext"] == base["securityContext"]


WRITTEN = {  # templates as written: a child's patch merged over its parent's
    "base": {"podSpecPatch": {
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "containers": [{"name": "db", "args": ["-a"],
                        "volumeMounts": [{"name": "c", "mountPath": "/c"}]}]}},
    "child": {"inherit": "base", "podSpecPatch": {
        "volumes": [{"name": "extra", "nfs": {"server": "s", "pth": "/x"}}],
        "containers": [{"name": "db", "args": ["-b", "-c"],
                        "volumeMounts": [{"name": "d", "mountPath": "/d"}]}]}},
}


@pytest.mark.parametrize("path, owner", [
    # a named item: at its index in the patch that has it, not in the merged one
    (("volumes", 1, "nfs", "pth"), ("child", ("volumes", 0, "nfs", "pth"))),
    (("volumes", 0, "emptyDir"), ("base", ("volumes", 0, "emptyDir"))),
    # volumeMounts are named by mountPath
    (("containers", 0, "volumeMounts", 0, "name"),
     ("base", ("containers", 0, "volumeMounts", 0, "name"))),
    (("containers", 0, "volumeMounts", 1), ("child", ("containers", 0, "volumeMounts", 0))),
    # a list replaced whole is the child's
    (("containers", 0, "args", 1), ("child", ("containers", 0, "args", 1))),
    # not in any patch as written: as given
    (("nodeName",), ("child", ("nodeName",))),
])
def test_a_patch_problem_is_named_in_the_template_whose_own_patch_holds_it(path, owner):
    merged = resolve_inheritance(WRITTEN)["child"]["podSpecPatch"]
    assert patch_owner(WRITTEN, "child", merged, path) == owner


THREE = {  # base -> mid -> child, each overriding the item before it by name
    "base": {"podSpecPatch": {"containers": [
        {"name": "db", "env": [{"name": "A", "value": "1"}],
         "ports": [{"containerPort": 5432, "protocl": "TCP"}]}]}},
    "mid": {"inherit": "base", "podSpecPatch": {"containers": [
        {"name": "side", "image": "busybox"},
        {"name": "db", "env": [{"name": "B", "valu": "2"}, {"name": "A", "vale": "x"}]}]}},
    "child": {"inherit": "mid", "podSpecPatch": {"containers": [
        {"name": "db", "env": [{"name": "A", "value": "3"}],
         "ports": [{"containerPort": 5432, "name": "pg"}]}]}},
}


@pytest.mark.parametrize("path, owner", [
    # the middle template's own item, overridden in part by the child: the middle's index
    (("containers", 0, "env", 0, "vale"), ("mid", ("containers", 1, "env", 1, "vale"))),
    (("containers", 0, "env", 1, "valu"), ("mid", ("containers", 1, "env", 0, "valu"))),
    # the child's value of an item all three have
    (("containers", 0, "env", 0, "value"), ("child", ("containers", 0, "env", 0, "value"))),
    # ports merged on containerPort: the root's field of the child's port
    (("containers", 0, "ports", 0, "protocl"), ("base", ("containers", 0, "ports", 0, "protocl"))),
    (("containers", 1, "image"), ("mid", ("containers", 0, "image"))),
])
def test_a_patch_problem_three_templates_deep_is_named_where_it_is_written(path, owner):
    merged = resolve_inheritance(THREE)["child"]["podSpecPatch"]
    assert [c["name"] for c in merged["containers"]] == ["db", "side"]
    assert patch_owner(THREE, "child", merged, path) == owner


def test_an_env_entry_or_a_volume_named_again_is_replaced_whole_as_the_plugin_does():
    """A child's env entry (or a patch's volume) of a name the parent already has replaces it
    whole, as the Kubernetes plugin's combineEnvVars and combineVolumes do: merged key by key,
    the parent's `value` stayed beside the child's `valueFrom` (and emptyDir beside the
    patch's persistentVolumeClaim), a pod the API server refuses (422) though the schema and
    check-config took it, so every build of the template failed at creation."""
    text = """routes: [{job: b, template: child}]
templates:
  parent:
    volumes: [{name: cache, mountPath: /cache, emptyDir: {}}]
    podSpecPatch:
      containers: [{name: jnlp, env: [{name: TOKEN, value: dummy}]}]
  child:
    inherit: parent
    volumes: [{name: cache, mountPath: /cache, nfs: {server: nfs, path: /c}}]
    podSpecPatch:
      containers: [{name: jnlp, env: [{name: TOKEN, valueFrom: {secretKeyRef: {name: tok,
                                                                             key: t}}}]}]
      volumes: [{name: workspace, persistentVolumeClaim: {claimName: ws}}]
"""
    spec = sample_manifest("child", parse_file_config(text).templates["child"])["spec"]
    [jnlp] = [c for c in spec["containers"] if c["name"] == "jnlp"]
    assert [e for e in jnlp["env"] if e["name"] == "TOKEN"] == [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["workspace"] == {"name": "workspace",
                                    "persistentVolumeClaim": {"claimName": "ws"}}
    assert volumes["cache"] == {"name": "cache", "nfs": {"server": "nfs", "path": "/c"}}


def test_a_null_in_an_env_entry_or_volume_named_again_still_removes_the_key():
    """`null` removes a key (README, Merging): the way a child re-sourced an inherited volume
    (`emptyDir: null` beside its `nfs:`) or turned an env entry's `value` into a `valueFrom`
    while entries merged key by key. Replaced whole, the item kept its nulls: the template
    was refused at load ("needs exactly one volume source", counting `emptyDir: null`), a
    config that loaded before, and the pod carried `value: null`."""
    text = """routes: [{job: b, template: child}]
templates:
  parent:
    volumes: [{name: cache, mountPath: /cache, emptyDir: {}}]
    podSpecPatch:
      containers: [{name: jnlp, env: [{name: TOKEN, value: dummy}]}]
  child:
    inherit: parent
    volumes: [{name: cache, mountPath: /cache, emptyDir: null, nfs: {server: nfs, path: /c}}]
    podSpecPatch:
      containers: [{name: jnlp, env: [{name: TOKEN, value: null, valueFrom: {secretKeyRef: {
        name: tok, key: t}}}]}]
"""
    spec = sample_manifest("child", parse_file_config(text).templates["child"])["spec"]
    [jnlp] = [c for c in spec["containers"] if c["name"] == "jnlp"]
    assert [e for e in jnlp["env"] if e["name"] == "TOKEN"] == [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "t"}}}]
    assert {v["name"]: v for v in spec["volumes"]}["cache"] == {
        "name": "cache", "nfs": {"server": "nfs", "path": "/c"}}
    assert merge({"env": [{"name": "A", "value": "x"}]},
                 {"env": [{"name": "A", "value": None, "valueFrom": {"k": 1}}]}) == {
        "env": [{"name": "A", "valueFrom": {"k": 1}}]}

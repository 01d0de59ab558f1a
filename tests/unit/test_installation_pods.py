"""An installation's label value, and whose a pod is (workers.core.installation_pods)."""

import re

import pytest

from workers.core.installation_pods import (
    INSTALLATION_ANNOTATION, INSTALLATION_LABEL, LegacyLookout, Owner, label_value, owner,
    selectors, stamp)

# Kubernetes, "Labels and Selectors", syntax and character set
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


@pytest.mark.parametrize("identity, value", [
    ("prod/ci-autoscaler", "prod.ci-autoscaler"),
    ("team-a.staging", "team-a.staging"),
    ("a", "a"),
    ("", ""),
])
def test_a_label_value_a_person_reads(identity, value):
    assert label_value(identity) == value


def test_a_long_identity_is_cut_and_ends_in_a_hash_of_the_whole():
    # the chart's "<namespace>/<release>": up to 63 + 1 + 53
    one, two = "n" * 63 + "/" + "r" * 52 + "1", "n" * 63 + "/" + "r" * 52 + "2"
    values = label_value(one), label_value(two)
    assert all(LABEL_VALUE.fullmatch(v) and len(v) == 63 for v in values)
    assert values[0] != values[1] and values[0].startswith("n" * 40)


def test_a_cut_never_ends_on_a_separator():
    value = label_value("a" * 53 + "-/-" + "b" * 20)
    assert LABEL_VALUE.fullmatch(value), value


def test_whose_a_pod_is():
    mine = stamp({}, "prod/ci")
    assert mine == {"labels": {INSTALLATION_LABEL: "prod.ci"},
                    "annotations": {INSTALLATION_ANNOTATION: "prod/ci"}}
    labels, annotations = mine["labels"], mine["annotations"]
    assert owner(labels, annotations, "prod/ci") == Owner.OURS
    # the same label value, another identity: the annotation tells them apart
    assert owner(labels, annotations, "prod.ci") == Owner.OTHER
    assert owner(labels, None, "prod/ci") == Owner.OURS  # PodMetrics: labels only
    assert owner(labels, annotations, "staging/ci") == Owner.OTHER
    assert owner(labels, annotations, "") == Owner.OTHER  # no identity: any label is another's
    assert owner({}, {}, "") == Owner.OURS
    assert owner({}, {}, "prod/ci") == Owner.LEGACY
    assert stamp({"labels": {"a": "b"}}, "") == {"labels": {"a": "b"}}


def test_selectors():
    assert selectors("m=ci", "") == (f"m=ci,!{INSTALLATION_LABEL}", None)
    assert selectors("m=ci", "prod/ci") == (f"m=ci,{INSTALLATION_LABEL}=prod.ci",
                                            f"m=ci,!{INSTALLATION_LABEL}")


def test_pods_of_before_are_looked_for_until_none_was_found_for_a_while():
    lookout = LegacyLookout("prod/ci", quiet_seconds=100)
    assert lookout.wanted()
    lookout.found(0, now=0)
    lookout.found(2, now=50)  # one appeared (a process of before still runs): wait again
    lookout.found(0, now=60)
    lookout.found(0, now=159)
    assert lookout.wanted()
    lookout.found(0, now=160)
    assert not lookout.wanted()
    assert not LegacyLookout("").wanted()  # without an identity they are its own

"""The strategic merge of ownerReferences that the test Kubernetes API plays (tests.support.
kmock_owners): by uid, as the API server does, where kmock alone replaces the list."""

import pytest

from tests.support.kmock_owners import merge_by_uid

OLD = {"apiVersion": "v1", "kind": "Pod", "name": "a", "uid": "old"}
NEW = {"apiVersion": "v1", "kind": "Pod", "name": "a", "uid": "new"}


@pytest.mark.parametrize(("stored", "patch", "merged"), [
    ([OLD], [NEW], [OLD, NEW]),  # added beside: what owning a re-provisioned pod's Secret did
    ([OLD], [{**OLD, "name": "b"}], [{**OLD, "name": "b"}]),  # the same uid: replaced
    ([OLD, NEW], [{"$patch": "delete", "uid": "old"}], [NEW]),
    ([], [{"$patch": "delete", "uid": "old"}], []),  # nothing to delete: no error
    ([OLD], [{"$patch": "replace"}, NEW], [NEW]),
])
def test_owner_references_merge_by_uid(stored, patch, merged):
    assert merge_by_uid(stored, patch) == merged

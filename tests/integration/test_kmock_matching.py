"""kmock's reactions matched without walking the history (tests.support.kmock_matching): the
same answer as kmock's own walk for every request and every kind of view, and a cost per
request that does not grow with the requests served before it."""

from kmock._internal import dsl

from tests.integration.test_kmock_in_flight import _session
from tests.support.kmock_cluster import running_kube
from tests.support.kmock_matching import fast_contains, walk_contains


def test_fast_matching_answers_as_kmocks_walk_for_every_request_and_view(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_kube(tmp_path / "a") as kube, running_kube(tmp_path / "b") as other:
        kube.fail("get", "/api/v1/namespaces/*/pods/agent-9", status=503, times=1)  # a slice
        answers = _session(kube.url) + _session(kube.url)
        _session(other.url)
        assert {status for status, _ in answers} >= {200, 201, 404, 409, 503}
        emu, stranger = kube._emu, other._emu

        def compare() -> tuple[int, int]:
            views = [payload._source for payload in emu._payloads] + [
                emu["get"], emu["post"]["/api/v1/*"], emu.fallback["delete"],
                emu["get"][1:4], emu["get"] | emu["delete"], emu["get"] - emu["/api/v1/nodes"],
                emu[lambda request: request.method.value == "POST"]]
            assert {type(v) for v in views} >= {dsl.Filter, dsl.Priority, dsl.Slicer,
                                                dsl.OrGroup, dsl.Exclusion}
            requests = list(emu._requests) + list(stranger._requests)
            seen = unseen = 0
            for view in views:
                for request in requests:
                    fast = fast_contains(view, request)
                    assert fast == walk_contains(view, request), (view, request)
                    seen, unseen = seen + fast, unseen + (not fast)
            return seen, unseen
        seen, unseen = kube._run(compare)
        assert seen > 100 and unseen > 100  # both answers were asked for, many times


def test_matching_a_request_checks_a_filter_once_whatever_the_history(tmp_path):
    calls = []

    def never(request) -> bool:  # a reaction's filter: counts the requests it is asked about
        calls.append(request)
        return False
    with running_kube(tmp_path) as kube:
        kube._run(lambda: kube._emu[never] << 500)
        for _ in range(20):  # 240 requests served before
            _session(kube.url)
        served = {id(request) for request in kube._run(lambda: list(kube._emu._requests))}
        calls.clear()
        _session(kube.url)  # 12 more, those kmock answers asking the filter once each
    # kmock's walk asked it about every request in the history, for each new one (thousands)
    assert calls and not any(id(request) in served for request in calls)
    assert len(calls) == len({id(request) for request in calls}) <= 12

"""The Kubernetes API server away while reconcile passes run: a managed control plane's
upgrade (its front answering 503 for minutes), or its priority and fairness throttling our
service account (429). Each pass fails at its first listing of pods. It was logged as
"reconcile pass failed" at ERROR with the client's whole traceback, every 15 s for as long
as the outage lasted, as an unexpected bug would be; now one warning line a pass that says
the API server is not answering, with the status it answered (as a Jenkins outage is said),
still counted and recorded as a failing pass. Real redis-server, kmock over HTTP."""

import logging

import pytest

from tests.integration.test_push_to_pod import NAMESPACE
from tests.integration.test_reconcile_repairs import app  # noqa: F401 (the fixture)
from workers import runtime
from workers.adapters.pass_store import PassStore
from workers.engine import reconcile

API_AWAY = "reconcile pass failed: the Kubernetes API server is not answering"


@pytest.mark.parametrize("status,reason", [(503, "ServiceUnavailable"),
                                           (429, "TooManyRequests")])
def test_passes_while_the_api_server_is_away_say_so_in_one_line_each(
        app, kube, caplog, status, reason):  # noqa: F811 (the fixture)
    kube.fail("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", status=status, reason=reason)
    rt = runtime.current()
    caplog.set_level(logging.INFO, logger="ci_autoscaler")

    for _ in range(2):
        assert reconcile.leader_pass(rt, "me") is True

    ours = [r for r in caplog.records if r.name == "ci_autoscaler.reconcile"]
    assert not any(r.exc_info for r in ours), [r.getMessage() for r in ours]
    said = [r for r in ours if r.getMessage().startswith(API_AWAY)]
    assert len(said) == 2 and all(r.levelno == logging.WARNING for r in said)
    assert all(f"HTTP {status}" in r.error for r in said)
    passes = PassStore(rt.state.redis, prefix=rt.state.prefix).read()
    assert passes.failed_passes == 2 and f"HTTP {status}" in passes.error

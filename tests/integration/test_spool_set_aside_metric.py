"""Rows the drainer sets aside (not a push: a damaged file) are counted where an operator
looks before deleting a web pod: its /metrics."""

from tests.support.app import make_app
from workers.engine.spool_drain import Drainer, SpooledPush


def test_rows_set_aside_are_counted_in_the_metrics(own_redis):
    """A row set aside left the spool's count (ci_autoscaler_spool_events 0, what the chart
    says to wait for before deleting a pod) and was said only in one log line: the pod was
    deleted, its emptyDir with it, and the pushes in set_aside that a person could still
    read went unseen."""
    app = make_app(own_redis.url)
    ctx = app.extensions["ci_autoscaler"]
    assert ctx.spool.put("gitlab:odd", b'{"delivery_id": 1}')  # a damaged file's row
    assert ctx.spool.put("gitlab:ok", SpooledPush("gitlab:ok", "k", b"{}", 60).to_bytes())
    assert Drainer(ctx.spool, ctx.state.intake).drain() == 2
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert "ci_autoscaler_spool_events 0.0" in metrics
    assert "ci_autoscaler_spool_set_aside_events 1.0" in metrics

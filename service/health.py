"""Liveness, readiness and the Prometheus endpoint."""

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from service.app import context, stranded_spools
from workers.adapters.spool import SpoolError
from workers.core.catchup import named_projects
from workers.telemetry.exposition import exposition

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready while a push can be stored: in the pod's spool, or else in Redis. A pod taken
    out of the Service for a Redis outage would turn GitLab's deliveries into connection
    errors, and four of those disable the hook. The spool is asked first, and Redis only when
    the spool cannot take a push: a ping of a hung Redis waits the web's socket timeout (2 s),
    and with Sentinel 0.5 s per silent sentinel, twice (3.0 s with three), past the chart's
    readinessProbe timeout (3 s), which took every web pod out of the Service. Pushes waiting
    in the spool are named: Redis has not taken them yet."""
    ctx = context()
    problem = "no spool" if ctx.spool is None else ctx.spool.check()
    if problem is None:
        try:
            waiting, _ = ctx.spool.counts()
        except SpoolError:  # it took a push a moment ago (check): ready, its count untold
            waiting = 0
        if waiting:
            return jsonify(status="ready", reason=f"{waiting} push(es) in the spool: "
                                                  "pushes go to the spool until Redis takes them")
        return jsonify(status="ready")
    if ctx.state.ping():
        return jsonify(status="ready", reason=f"the spool cannot take pushes: {problem}")
    return jsonify(status="unavailable",
                   reason=f"redis does not answer, and the spool cannot be written: {problem}"), 503


@bp.get("/metrics")
def metrics():
    ctx = context()
    text = exposition(state=ctx.state, capacity=ctx.capacity, engine=ctx.metrics,
                      templates=ctx.config.templates,
                      projects=named_projects(ctx.config.routes, ctx.config.catch_up),
                      spool=ctx.spool, stranded=lambda: stranded_events(ctx.settings),
                      counters=ctx.counters,
                      fatal_reasons=ctx.settings.fatal_waiting_reasons)
    # content_type, not mimetype: Flask adds a charset to a mimetype, and CONTENT_TYPE_LATEST has
    # one already; a parameter named twice is malformed, and Prometheus 3 fails a scrape whose
    # Content-Type a strict parser refuses.
    return Response(text, content_type=CONTENT_TYPE_LATEST)


def stranded_events(settings) -> int:
    """The pushes in this installation's default spools of other Redis targets (those that
    cannot be read are named at start, and not counted)."""
    return sum(n for n in stranded_spools(settings).values() if isinstance(n, int))

"""Liveness, readiness and the Prometheus endpoint."""

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from service.app import context
from workers.core.catchup import named_projects
from workers.exposition import exposition

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    if context().state.ping():
        return jsonify(status="ready")
    return jsonify(status="unavailable", reason="redis does not answer"), 503


@bp.get("/metrics")
def metrics():
    ctx = context()
    text = exposition(state=ctx.state, capacity=ctx.capacity, engine=ctx.metrics,
                      templates=ctx.config.templates,
                      projects=named_projects(ctx.config.routes, ctx.config.catch_up))
    return Response(text, mimetype=CONTENT_TYPE_LATEST)

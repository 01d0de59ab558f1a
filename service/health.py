"""Liveness, readiness and the Prometheus endpoint."""

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from service.app import context
from workers.metrics import exposition

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
    return Response(exposition(context().capacity), mimetype=CONTENT_TYPE_LATEST)

"""The Flask application factory."""

import logging
import threading
from dataclasses import dataclass, field

import redis
from flask import Flask, current_app, jsonify, request
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import HTTPException

from service.edge import WebhookRoutes, log_rejection
from service.ports import PortRoles
from service.redis_gate import RedisGate
from service.startup import NO_CLIENT_SETINFO, configured_file, hold_live, require_tokens
from service.startup import signing_key_of
from workers.adapters import spool_adopt
from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.adapters.spool import Spool, SpoolError, spooled_events
from workers.config.config_file import FileConfig
from workers.config.settings import Settings
from workers.config.spool_paths import LEGACY_SPOOL_PATH, default_spool_paths
from workers.config.settings import load_settings
from workers.telemetry.metrics import EngineMetrics
from workers.telemetry.monotonic_counters import MonotonicCounters
from workers.engine.spool_drain import Drainer

log = logging.getLogger("ci_autoscaler.web")
# A webhook that cannot store its event answers 503 fast, well inside GitLab's 10 s: a lost
# connection is tried once more at once (one that went stale when Redis restarted), a timeout
# is not retried. Measured with Redis stopped: 503 in ~2 ms; with Redis hung (SIGSTOP): 503 after
# the settings' redis timeout (2 s). A first connect gives up after 0.5 s.
REDIS_CONNECT_TIMEOUT_SECONDS = 0.5
REDIS_RETRY = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    config: FileConfig
    state: RedisState
    capacity: CapacityStore
    metrics: EngineMetrics
    gitlab_signing_key: bytes | None = None  # HMAC key of GitLab's signing token, when set
    spool: Spool | None = None  # where pushes go while Redis cannot take them (service.store)
    # the shared counters never exposed lower than before in this pod (a failover's drop)
    counters: MonotonicCounters | None = None
    # while Redis does not answer, one store attempt at a time waits on it (service.redis_gate)
    redis_gate: RedisGate = field(default_factory=RedisGate)


def context() -> WebContext:
    return current_app.extensions["ci_autoscaler"]


def create_app(settings: Settings | None = None, *, file_config: FileConfig | None = None,
               redis_connection: redis.Redis | None = None) -> Flask:
    """Build the app; refuses to start (ConfigError) without tokens or a valid config file."""
    settings = settings or load_settings()
    require_tokens(settings)
    signing_key = signing_key_of(settings)
    if file_config is None:
        file_config = configured_file(settings)
    if redis_connection is None:
        redis_connection = settings.redis_client(
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
            retry=REDIS_RETRY, **NO_CLIENT_SETINFO)
    state = RedisState(redis_connection, prefix=settings.key_prefix,
                       queue_name=settings.queue_name, push_wait=(
                           settings.push_replicas,
                           int(settings.redis_timeout_seconds * 500)))
    spool = Spool(settings.spool_path, owner=settings.spool_owner,
                  private=settings.spool_is_default, max_events=settings.spool_max_events,
                  max_bytes=settings.spool_max_bytes)
    if (problem := spool.check()) is not None:  # the web still starts: Redis may be fine
        log.error("the spool cannot take events: a push Redis cannot take will be answered 503",
                  extra={"spool": str(spool.directory), "error": problem})
    # This web runs on the spool's directory, said for as long as it runs
    # (workers.adapters.spool_live): another installation's web neither counts it as
    # stranded nor adopts from it.
    hold_live(spool)
    legacy_spool_left(settings)
    stranded_spools_left(settings)

    app = Flask("ci_autoscaler")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["ci_autoscaler"] = WebContext(
        settings, file_config, state, CapacityStore(redis_connection, prefix=settings.key_prefix),
        EngineMetrics(redis_connection, prefix=settings.key_prefix), signing_key, spool,
        MonotonicCounters.for_process())

    from service.health import bp as health_bp
    from service.status import bp as status_bp
    from service.webhooks import admissions, routes
    app.register_blueprint(health_bp)
    app.register_blueprint(status_bp)
    # The webhooks are served in front of Flask (service.edge), everything else by Flask.
    webhooks = WebhookRoutes(routes(app.extensions["ci_autoscaler"]), fallback=app.wsgi_app,
                             admitted=admissions(app.extensions["ci_autoscaler"]),
                             body_limit=settings.max_body_bytes)
    app.wsgi_app = webhooks  # type: ignore
    app.body_wanted = webhooks.body_wanted  # type: ignore  # read by service.http_worker
    app.secret_values = settings.secret_values  # type: ignore  # service.http_worker's logger
    if settings.admin_port is not None:  # /metrics and /status on their own port only
        app.wsgi_app = PortRoles(app.wsgi_app, admin_port=settings.admin_port)  # type: ignore

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if request.path.startswith("/webhooks/") and err.code is not None and err.code < 500:
            log_rejection(request.environ, err.code, err.description,
                          secrets=settings.secret_values)
        return jsonify(error=err.name.lower().replace(" ", "_"), reason=err.description), err.code

    return app


def legacy_spool_left(settings: Settings) -> None:
    """Versions before the spool's owner all spooled to one default directory for every
    installation of the host; its pushes are not drained by default (whose they are is not
    known): said at start while it holds some, with how to drain them. Those versions made
    the file at every start, pushes or not: an empty one is not named."""
    if not settings.spool_is_default:
        return
    try:
        events: int | str = spooled_events(LEGACY_SPOOL_PATH)
    except SpoolError as err:  # cannot be read (another user's): it may hold pushes
        events = f"unknown ({err})"
    if events:
        log.warning("a spool of an earlier version is left: its pushes are not drained unless "
                    "the one installation they belong to is started once with "
                    "CI_AUTOSCALER_SPOOL_DIR set to it",
                    extra={"spool": LEGACY_SPOOL_PATH, "events": events})


def stranded_spools_left(settings: Settings) -> None:
    """The default spool directories of this user and installation for another Redis target
    (REDIS_URL's host or port, Sentinel, database or key prefix changed with pushes spooled),
    or for this one while CI_AUTOSCALER_SPOOL_DIR names another: nothing reads them. Named at
    start while they hold pushes (counted read-only), with the command that adopts them; and
    counted at each scrape (ci_autoscaler_spool_stranded_events)."""
    for path, events in stranded_spools(settings).items():
        log.warning("a default spool of this installation for another Redis holds pushes "
                    "nothing drains: adopt them into this web's spool with `ci-autoscaler "
                    "spool adopt --dir <spool> --other-redis`",
                    extra={"spool": path, "events": events})


def stranded_spools(settings: Settings) -> dict[str, int | str]:
    return spool_adopt.stranded(default_spool_paths(settings), settings.spool_path)


def start_spool_drainer(app: Flask) -> tuple[threading.Thread, threading.Event] | None:
    """Start the thread that moves the spool's pushes into Redis (workers.engine.spool_drain); set the
    event to stop it."""
    ctx = app.extensions["ci_autoscaler"]
    return drainer(ctx).start() if ctx.spool is not None else None


def drainer(ctx: WebContext) -> Drainer:
    """The drainer of the web's spool: pushes into the intake, Jenkins notifications handed
    to the webhook's own handling once Redis takes them."""
    from service import webhooks  # it imports this module

    return Drainer(ctx.spool, ctx.state.intake,
                   notes=lambda payload, received_at: webhooks.spooled_notification(
                       ctx, payload, received_at))

"""The Flask application factory."""

import logging
from dataclasses import dataclass

import redis
from flask import Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException

from workers.adapters.capacity_store import CapacityStore
from workers.adapters.redis_state import RedisState
from workers.config import FileConfig, Settings, load_file_config, load_settings
from workers.core.errors import ConfigError
from workers.metrics import EngineMetrics

log = logging.getLogger("ci_autoscaler.web")
REDIS_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    config: FileConfig
    state: RedisState
    capacity: CapacityStore
    metrics: EngineMetrics


def context() -> WebContext:
    return current_app.extensions["ci_autoscaler"]


def _require_tokens(settings: Settings) -> None:
    missing = [name for name, value in (("GITLAB_WEBHOOK_TOKEN", settings.gitlab_webhook_token),
                                        ("JENKINS_WEBHOOK_TOKEN", settings.jenkins_webhook_token))
               if value is None or not value.get_secret_value()]
    if missing and not settings.insecure_no_tokens:
        raise ConfigError([f"{name}: required (webhook tokens have no default)"
                           for name in missing])
    if missing:
        log.warning("INSECURE: webhooks accept requests without a token",
                    extra={"missing": missing})


def create_app(settings: Settings | None = None, *, file_config: FileConfig | None = None,
               redis_connection: redis.Redis | None = None) -> Flask:
    """Build the app; refuses to start (ConfigError) without tokens or a valid config file."""
    settings = settings or load_settings()
    _require_tokens(settings)
    if file_config is None:
        if not settings.config_path:
            raise ConfigError(["CI_AUTOSCALER_CONFIG: required: the path of the routes and "
                               "templates file"])
        file_config = load_file_config(settings.config_path)
    if redis_connection is None:
        redis_connection = redis.Redis.from_url(
            settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
    state = RedisState(redis_connection, prefix=settings.key_prefix,
                       queue_name=settings.queue_name)

    app = Flask("ci_autoscaler")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["ci_autoscaler"] = WebContext(
        settings, file_config, state, CapacityStore(redis_connection, prefix=settings.key_prefix),
        EngineMetrics(redis_connection, prefix=settings.key_prefix))

    from service.health import bp as health_bp
    from service.webhooks import bp as webhooks_bp
    app.register_blueprint(webhooks_bp)
    app.register_blueprint(health_bp)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        return jsonify(error=err.name.lower().replace(" ", "_"), reason=err.description), err.code

    return app

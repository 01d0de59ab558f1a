"""What the web refuses to start on: a missing webhook token, a malformed signing token, a bad
config file. Checked by create_app in each gunicorn worker, and first by gunicorn's master
(service/gunicorn.conf.py), which imports no more than this: the app's modules would make the
master create the metric files (prometheus_client multiprocess) that its workers should."""

import logging

from service import signing
from workers.config import FileConfig, Settings, load_file_config, load_settings
from workers.core.errors import ConfigError

log = logging.getLogger("ci_autoscaler.web")


def require_tokens(settings: Settings) -> None:
    missing = [name for name, value in (("GITLAB_WEBHOOK_TOKEN", settings.gitlab_webhook_token),
                                        ("JENKINS_WEBHOOK_TOKEN", settings.jenkins_webhook_token))
               if value is None or not value.get_secret_value()]
    if missing and not settings.insecure_no_tokens:
        raise ConfigError([f"{name}: required (webhook tokens have no default)"
                           for name in missing])
    if missing:
        log.warning("INSECURE: webhooks accept requests without a token",
                    extra={"missing": missing})


def signing_key_of(settings: Settings) -> bytes | None:
    token = settings.gitlab_webhook_signing_token
    if token is None or not token.get_secret_value():
        return None
    try:
        return signing.signing_key(token.get_secret_value())
    except ValueError as err:  # the reason names the format, never the value
        raise ConfigError([f"GITLAB_WEBHOOK_SIGNING_TOKEN: {err}"]) from None


def configured_file(settings: Settings) -> FileConfig:
    if not settings.config_path:
        raise ConfigError(["CI_AUTOSCALER_CONFIG: required: the path of the routes and "
                           "templates file"])
    return load_file_config(settings.config_path)


def check() -> None:
    """Everything above, from the environment, starting nothing (ConfigError if refused)."""
    settings = load_settings()
    require_tokens(settings)
    signing_key_of(settings)
    configured_file(settings)

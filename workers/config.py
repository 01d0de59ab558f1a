"""Settings: environment variables plus one YAML file of routes and pod templates.

`load_settings()` reads the environment, `load_file_config(path)` reads and validates the file;
both raise ConfigError naming the field (and, for the file, the line) and the reason.

The one name the service, the workers, the tests and the benchmarks import them by; each part
lives in a module of its own: workers.settings (the environment), workers.config_file (the
file's schema and loading), workers.spool_paths (the default spool directories).
"""

from workers.config_file import FileConfig, _problem, load_file_config, parse_file_config
from workers.settings import (BUILD_TTL_SECONDS, CATCH_UP_INTERVAL_SECONDS, DEDUPE_TTL_SECONDS,
                              DEFAULT_MAX_BODY_BYTES, HTTP_URL_FIELDS, WEBHOOK_MAX_SKEW_SECONDS,
                              Settings, bind_port, load_settings)
from workers.spool_paths import LEGACY_SPOOL_PATH, default_spool_path, default_spool_paths

__all__ = [
    "BUILD_TTL_SECONDS", "CATCH_UP_INTERVAL_SECONDS", "DEDUPE_TTL_SECONDS",
    "DEFAULT_MAX_BODY_BYTES", "HTTP_URL_FIELDS", "LEGACY_SPOOL_PATH", "WEBHOOK_MAX_SKEW_SECONDS",
    "FileConfig", "Settings", "bind_port", "default_spool_path", "default_spool_paths",
    "load_file_config", "load_settings", "parse_file_config",
    "_problem",  # workers.config_warnings places its warnings as the file's problems
]

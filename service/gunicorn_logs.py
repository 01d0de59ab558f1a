"""gunicorn's own log lines, redacted as the service's are (workers.telemetry.logs).

gunicorn's error log keeps its text format, but its lines with a traceback ("Error handling
request <URI>", "Exception in worker process" as a worker fails to boot) printed the
exception's message and chain as they were (logging.Formatter.formatException): a message
quoting a token or a URL's password went out verbatim, the service's own formatter never
seeing it (gunicorn's loggers do not propagate to the root). Each handler gunicorn sets up
(on start and on each reload: Logger.setup) now redacts the whole line, its traceback told as
RQ keeps a job's failure (concurrency.failure_text: no page answered). The shipped config
names this class (service/gunicorn.conf.py logger_class).
"""

import logging

from gunicorn import glogging
from gunicorn.instrument.statsd import Statsd

from workers.concurrency.failure_text import failure_text
from workers.telemetry import logs


class RedactedText(logging.Formatter):
    """gunicorn's format, the line redacted and its traceback told without a page answered."""

    def formatException(self, ei) -> str:  # noqa: N802 (logging's name)
        return failure_text(ei, logs.secrets()).rstrip("\n")

    def format(self, record: logging.LogRecord) -> str:
        return logs.redacted(super().format(record))


class _Redacting:
    """Redacts each handler gunicorn sets up (on start and on each reload: Logger.setup)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)  # type: ignore[misc]
        for log in (self.error_log, self.access_log):  # type: ignore[attr-defined]
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False) and \
                        not isinstance(handler.formatter, RedactedText):
                    shown = handler.formatter or logging.Formatter()
                    handler.setFormatter(RedactedText(shown._fmt, shown.datefmt))


class PlainLogger(_Redacting, glogging.Logger):
    pass


class StatsdLogger(_Redacting, Statsd):
    pass


def Logger(cfg):  # noqa: N802 (the name the config gives gunicorn: logger_class)
    """gunicorn's own choice, redacted. gunicorn swaps its default logger for its statsd one
    when --statsd-host is given (gunicorn/config.py Config.logger_class), but only while
    logger_class is its default: naming a class here silently dropped an operator's statsd
    metrics (test_an_access_log_turned_on_shows_no_token[statsd])."""
    return (StatsdLogger if cfg.statsd_host is not None else PlainLogger)(cfg)

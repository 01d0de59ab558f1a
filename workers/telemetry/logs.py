"""JSON-lines logging. Pass context as ``extra={"build_key": ..., ...}``; it becomes fields.

Never pass a token or an agent secret. Every text of a line is redacted all the same
(core.redaction: a URL's user:password@, token-like words, and the process's own secrets, its
settings' values, told by `hide_secrets` as they load): an error's text quotes what an outside
answer said (GitLab's message for a refused commit status, Jenkins' reason for a queue item,
a library's exception), which may repeat a credential it was sent.
"""

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

import orjson

from workers.concurrency.failure_text import last_error
from workers.core.redaction import Redactor

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# The process's secrets (hide_secrets), blanked out of every line
_secrets: tuple[str, ...] = ()
_redactor = Redactor()


def hide_secrets(secrets: Iterable[str]) -> None:
    """Blank these out of every JSON line from now on, with those told before (a secret once
    known stays hidden): the settings' secret values, told by workers.config.settings as they
    load, in every process (the web's master and workers, the worker, the reconcile loop,
    the start-up checks)."""
    global _secrets, _redactor
    _secrets = tuple(dict.fromkeys((*_secrets, *(s for s in secrets if s))))
    _redactor = Redactor(_secrets)


def secrets() -> tuple[str, ...]:
    """The secrets told so far (hide_secrets)."""
    return _secrets


def redacted(text: str) -> str:
    """The text as a line shows it: without the secrets told, URL credentials, token-like words."""
    return _redactor(text)


def _shown(value: Any, redact: Redactor) -> Any:
    """A field's value as the line shows it: every text in it redacted, numbers as they are."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _shown(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_shown(v, redact) for v in value]
    return redact(str(value))  # what the line showed of it before: str()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        redact = _redactor
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        line.update({k: _shown(v, redact) for k, v in vars(record).items()
                     if k not in _STANDARD})
        if record.exc_info:
            line["error"] = last_error(record.exc_info, redact.secrets)
        try:  # orjson: a third of the json module's time, on every webhook's log line
            return orjson.dumps(line, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int past 64 bits
            return json.dumps(line, default=str)


class ExtraHeaderValuesHidden(logging.Filter):
    """python-jenkins logs the headers JENKINS_API_EXTRA_HEADERS adds, values and all, as a
    warning of the root logger, each time a client is made (jenkins.Jenkins.__init__): a
    header for a proxy in front of Jenkins carries a credential. Its line keeps the header
    names only. A filter of the root logger itself (`hide_extra_header_values`), not of one
    handler: with no handler there yet (`check-config --live`), logging.warning sets up
    basicConfig's own, which printed the values."""

    MESSAGE = "JENKINS_API_EXTRA_HEADERS adds these HTTP headers: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE and record.args:
            lines = record.args[0] if isinstance(record.args, tuple) else record.args
            names = [str(line).split(":", 1)[0].strip() for line in lines or ()]
            record.msg, record.args = ("JENKINS_API_EXTRA_HEADERS adds these HTTP headers "
                                       "(values not shown): %s", (names,))
        return True


def hide_extra_header_values() -> None:
    """The root logger's ExtraHeaderValuesHidden, once: called by whatever makes a python-jenkins
    client (workers.adapters.jenkins) and by `configure`."""
    root = logging.getLogger()
    if not any(isinstance(f, ExtraHeaderValuesHidden) for f in root.filters):
        root.addFilter(ExtraHeaderValuesHidden())


def configure(level: str = "INFO", stream=None) -> None:
    from workers.telemetry import uncaught

    hide_extra_header_values()
    uncaught.install()  # an uncaught exception's text redacted too, not printed as it is
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

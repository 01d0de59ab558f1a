"""A Jenkins Notification plugin body read for the few fields a notification needs, and nothing
else, as a push is (workers.core.push_payload). Pure.

The plugin's body has free-form parts we never read (the run's scm, artifacts, log, notes and
every parameter), and the token that lets one in is shared by every job and travels in job
configs and URLs (issue 17). Parsed whole (orjson), 4 MiB of empty objects made a million
dicts: one request took a web worker up by 133 MiB, eight at once to 568 MB, past the chart's
384 MiB for the pod (tests/integration/test_webhook_memory.py). msgspec skips what its types do
not name without making anything of it; the fields read of an open type (a status, a queue
id, the agent's parameter) are kept as raw bytes and read only when small.

The result is the dict parse_jenkins_notification reads, with those fields only: what the
spool keeps of a notification Redis could not take.
"""

from typing import Any

import msgspec

from workers.core.errors import InvalidPayload
from workers.core.partial_json import (
    DEPTH_REFUSED, MAX_RAW_FIELD_BYTES, check_utf8, refusal, small as _small,
)
from workers.core.routing import AGENT_PARAMETER


class _Parameters(msgspec.Struct):
    agent: msgspec.Raw = msgspec.field(name=AGENT_PARAMETER, default=msgspec.Raw())


class _Build(msgspec.Struct):
    number: msgspec.Raw  # read by orjson: it reads an integer past 64 bits as a float
    phase: str
    status: msgspec.Raw = msgspec.Raw()
    queue_id: msgspec.Raw = msgspec.Raw()
    full_url: msgspec.Raw = msgspec.Raw()
    parameters: msgspec.Raw = msgspec.Raw()


class _Notification(msgspec.Struct):
    name: str
    build: _Build
    url: msgspec.Raw = msgspec.Raw()


_NOTIFICATION = msgspec.json.Decoder(_Notification)
_PARAMETERS = msgspec.json.Decoder(_Parameters)
# What a notification past the web's limit is trimmed to (workers.core.json_trim): the members
# the structs above read; not its log lines, artifacts, changed files or other parameters
# (tests/unit/test_json_trim.py holds them to it).
NOTIFICATION_SPEC = {b"name": True, b"url": True, b"build": {
    b"number": True, b"phase": True, b"status": True, b"queue_id": True, b"full_url": True,
    b"parameters": {AGENT_PARAMETER.encode(): True}}}


def _parameters(raw: msgspec.Raw) -> dict[str, Any]:
    """The run's parameters as far as they are read (its agent's). A value that is no object
    is none if it is empty (null, [], ""), as parse_jenkins_notification takes it, and else
    refused as there."""
    if not raw:
        return {}
    if memoryview(raw)[:1] != b"{":
        if _small(raw) or len(raw) > MAX_RAW_FIELD_BYTES:
            raise InvalidPayload("field 'build.parameters' must be an object")
        return {}
    agent = _small(_PARAMETERS.decode(raw).agent)
    return {} if agent is None else {AGENT_PARAMETER: agent}


def notification_fields(body: bytes) -> dict[str, Any]:
    """The fields of a notification body that parse_jenkins_notification reads, as a dict;
    raises InvalidPayload (not JSON, not an object, a field missing or of the wrong type)."""
    check_utf8(body)  # what msgspec skips it does not check (workers.core.partial_json)
    try:
        fields = _NOTIFICATION.decode(body)
        build = fields.build
        out: dict[str, Any] = {"name": fields.name, "build": {
            "number": _small(build.number), "phase": build.phase,
            "parameters": _parameters(build.parameters)}}
    except RecursionError:
        raise InvalidPayload(DEPTH_REFUSED) from None
    except msgspec.DecodeError as err:
        raise _problem(err) from None
    for name, raw in (("status", build.status), ("queue_id", build.queue_id),
                      ("full_url", build.full_url)):
        if (value := _small(raw)) is not None:
            out["build"][name] = value
    if (url := _small(fields.url)) is not None:
        out["url"] = url
    return out


def _problem(err: msgspec.DecodeError) -> InvalidPayload:
    text = str(err)
    if not isinstance(err, msgspec.ValidationError):
        return InvalidPayload(f"body is not valid JSON: {text}")
    refused = refusal(text)
    where = refused.where
    if refused.missing:
        return InvalidPayload(f"missing field {'.'.join(filter(None, (where, refused.missing)))!r}")
    if not where:
        return InvalidPayload("body must be a JSON object")
    kind = refused.expected or "value of another type"
    return InvalidPayload(f"field {where!r} must be {'an' if kind == 'object' else 'a'} {kind}")

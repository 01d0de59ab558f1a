"""A GitLab push body read for the few fields a build needs, and nothing else. Pure.

A push is mostly what we do not use: up to 20 commits with their messages and changed files,
and the repository. Parsed whole (orjson), one 25 MiB push took a web worker from 61 MB to
864 MB (issue 17). pydantic's JSON parser (jiter, in Rust) checks the whole body's syntax but
makes Python objects only for the fields below, and refuses a string over its bound before it
is made; so a request costs about its body, which the webhook's limit bounds
(service.webhooks; tests/integration/test_webhook_memory.py measures it).
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.core.errors import InvalidPayload
from workers.core.validation import MAX_PROJECT_PATH_BYTES, MAX_REF_BYTES, MAX_USER_BYTES

MAX_SHA_CHARS = 64
# Strings past these many characters are refused before they are made (a character is at least
# a byte, so a string past its byte bound is past it too); the byte bounds are checked after
# (workers.core.validation).
_Ref = Annotated[str, Field(strict=True, max_length=MAX_REF_BYTES)]
_Sha = Annotated[str, Field(strict=True, max_length=MAX_SHA_CHARS)]
_Path = Annotated[str, Field(strict=True, max_length=MAX_PROJECT_PATH_BYTES)]
_User = Annotated[str, Field(strict=True, max_length=MAX_USER_BYTES)]
_NAMES = {"ref": "ref", "after": "sha", "checkout_sha": "sha",
          "project.path_with_namespace": "project path", "user_username": "user name",
          "user_name": "user name"}


class _Project(BaseModel):
    model_config = ConfigDict(extra="ignore")
    path_with_namespace: _Path
    # The project's numeric id, which a rename or move keeps (its path changes): taken as it
    # comes and checked by routing (a push is never refused for it).
    id: Any = None


class _PushFields(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ref: _Ref
    after: _Sha
    checkout_sha: _Sha | None = None
    user_username: _User | None = None
    user_name: _User | None = None
    project: _Project
    # GitLab's ci.variable push options: a few short strings (only the size hints are kept)
    push_options: Any = None
    project_id: Any = None  # the same as project.id


class _SystemHookEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_name: Annotated[str, Field(strict=True, max_length=64)] | None = None


def system_hook_event(body: bytes) -> str | None:
    """The `event_name` of a GitLab system hook's body ("push", "tag_push",
    "repository_update", "project_create", ...), or None when it has none; raises
    InvalidPayload as push_fields does."""
    try:
        return _SystemHookEvent.model_validate_json(body).event_name
    except ValidationError as err:
        problem = _problem(err)
        if isinstance(problem, FieldTooLong):
            return None  # no event name of GitLab's is that long: not one that builds
        raise problem from None


class FieldTooLong(Exception):
    """A field past its bound: the push is ignored, not refused (GitLab disables a hook that
    gets 4xx answers; workers.core.validation)."""


def push_fields(body: bytes) -> dict[str, Any]:
    """The fields of a push body that parse_gitlab_push reads, as a dict; raises InvalidPayload
    (not JSON, not an object, a field missing or of the wrong type) or FieldTooLong."""
    try:
        fields = _PushFields.model_validate_json(body)
    except ValidationError as err:
        raise _problem(err) from None
    # Read off the model (model_dump was a quarter of this function's time on a real push).
    out: dict[str, Any] = {"ref": fields.ref, "after": fields.after,
                           "project": {"path_with_namespace": fields.project.path_with_namespace}}
    if fields.project.id is not None:
        out["project"]["id"] = fields.project.id
    for name in ("checkout_sha", "user_username", "user_name", "push_options", "project_id"):
        if (value := getattr(fields, name)) is not None:
            out[name] = value
    return out


def _problem(err: ValidationError) -> Exception:
    errors = err.errors(include_url=False, include_input=False)
    for error in errors:
        kind, where = error["type"], ".".join(str(p) for p in error["loc"])
        if kind == "json_invalid":
            return InvalidPayload(f"body is not valid JSON: {error['msg']}")
        if kind == "model_type" and not error["loc"]:
            return InvalidPayload("body must be a JSON object")
    for error in errors:
        kind, where = error["type"], ".".join(str(p) for p in error["loc"])
        if kind == "string_too_long":
            limit = error.get("ctx", {}).get("max_length")
            unit = "characters" if where in ("after", "checkout_sha") else "bytes"
            return FieldTooLong(f"{_NAMES.get(where, where)} is longer than {limit} {unit}")
    error = errors[0]
    kind, where = error["type"], ".".join(str(p) for p in error["loc"])
    if kind == "missing":  # the one field read of a project named for a missing project
        return InvalidPayload(f"missing field "
                              f"{'project.path_with_namespace' if where == 'project' else where!r}")
    if kind == "model_type":
        return InvalidPayload(f"field {where!r} must be an object")
    return InvalidPayload(f"field {where!r} must be a str")

"""A GitLab push body read for the few fields a build needs, and nothing else. Pure.

A push is mostly what we do not use: up to 20 commits with their messages and changed files,
and the repository. Parsed whole (orjson), one 25 MiB push took a web worker from 61 MB to
864 MB (issue 17). pydantic's JSON parser did better but still built a tree of every value
before it validated: a 4 MiB body of tiny values (`"added": [0,0,0,...]`, two bytes each) made
two million nodes, 72 MiB for one request (tests/integration/test_issue17_operator.py). msgspec
skips what its types do not name without making anything of it (checking its syntax; what it
does not check, workers.core.partial_json does), refuses a string over its bound before it is
made, and keeps what may be large and is read only when small (push options, project ids) as
raw bytes; so a request costs about its body, which the webhook's limit bounds
(service.webhooks; tests/integration/test_webhook_memory.py measures it). msgspec is a parser,
no I/O: the core may use it.
"""

from typing import Annotated, Any

import msgspec

from workers.core.errors import InvalidPayload
from workers.core.partial_json import DEPTH_REFUSED, check_utf8, refusal, small as _small
from workers.core.push_skip import message_skips
from workers.core.validation import MAX_PROJECT_PATH_BYTES, MAX_REF_BYTES, MAX_USER_BYTES

MAX_SHA_CHARS = 64
# Strings past these many characters are refused before they are made (a character is at least
# a byte, so a string past its byte bound is past it too); the byte bounds are checked after
# (workers.core.validation).
_Ref = Annotated[str, msgspec.Meta(max_length=MAX_REF_BYTES)]
_Sha = Annotated[str, msgspec.Meta(max_length=MAX_SHA_CHARS)]
_Path = Annotated[str, msgspec.Meta(max_length=MAX_PROJECT_PATH_BYTES)]
_User = Annotated[str, msgspec.Meta(max_length=MAX_USER_BYTES)]
_NAMES = {"ref": "ref", "after": "sha", "checkout_sha": "sha",
          "project.path_with_namespace": "project path", "user_username": "user name",
          "user_name": "user name"}


class _Project(msgspec.Struct):
    path_with_namespace: _Path
    # The project's numeric id, which a rename or move keeps (its path changes): taken as it
    # comes and checked by routing (a push is never refused for it).
    id: msgspec.Raw = msgspec.Raw()


class _PushFields(msgspec.Struct):
    ref: _Ref
    after: _Sha
    project: _Project
    # null (not absent) when GitLab found no commit for a tag: see routing.parse_gitlab_push
    checkout_sha: _Sha | None | msgspec.UnsetType = msgspec.UNSET
    user_username: _User | None = None
    user_name: _User | None = None
    # GitLab's ci.variable push options: a few short strings (only the size hints are kept)
    push_options: msgspec.Raw = msgspec.Raw()
    project_id: msgspec.Raw = msgspec.Raw()  # the same as project.id


class _Commit(msgspec.Struct):
    id: _Sha = ""
    message: msgspec.Raw = msgspec.Raw()  # read for the pushed commit only (push_skip)


class _Commits(msgspec.Struct):
    """A push's `commits`, read apart from _PushFields: a push past the web's limit is read
    without them (its trimmed body keeps no commits: PUSH_SPEC), so such a push's commit
    message is not looked at. A list of anything else (GitLab before 9 sent "" for none) is
    read as none."""
    commits: list[_Commit] | str | None = None


class _SystemHookEvent(msgspec.Struct):
    event_name: Annotated[str, msgspec.Meta(max_length=64)] | None = None


_PUSH = msgspec.json.Decoder(_PushFields)
# What a push past the web's limit is trimmed to (workers.core.json_trim): the members the two
# structs above read (tests/unit/test_json_trim.py holds them to it).
PUSH_SPEC = {b"ref": True, b"after": True, b"checkout_sha": True, b"user_username": True,
             b"user_name": True, b"push_options": True, b"project_id": True,
             b"event_name": True,
             b"project": {b"path_with_namespace": True, b"id": True}}
_SYSTEM_HOOK = msgspec.json.Decoder(_SystemHookEvent)
_COMMITS = msgspec.json.Decoder(_Commits)


def system_hook_event(body: bytes) -> str | None:
    """The `event_name` of a GitLab system hook's body ("push", "tag_push",
    "repository_update", "project_create", ...), or None when it has none; raises
    InvalidPayload as push_fields does."""
    check_utf8(body)  # what msgspec skips it does not check (workers.core.partial_json)
    try:
        return _SYSTEM_HOOK.decode(body).event_name
    except RecursionError:
        raise InvalidPayload(DEPTH_REFUSED) from None
    except msgspec.DecodeError as err:
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
    check_utf8(body)  # what msgspec skips it does not check (workers.core.partial_json)
    try:
        fields = _PUSH.decode(body)
    except RecursionError:
        raise InvalidPayload(DEPTH_REFUSED) from None
    except msgspec.DecodeError as err:
        raise _problem(err) from None
    out: dict[str, Any] = {"ref": fields.ref, "after": fields.after,
                           "project": {"path_with_namespace": fields.project.path_with_namespace}}
    if (project := _small(fields.project.id)) is not None:
        out["project"]["id"] = project
    if fields.checkout_sha is not msgspec.UNSET:
        out["checkout_sha"] = fields.checkout_sha
    for name in ("user_username", "user_name"):
        if (value := getattr(fields, name)) is not None:
            out[name] = value
    for name in ("push_options", "project_id"):
        if (value := _small(getattr(fields, name))) is not None:
            out[name] = value
    if message := _skipping_message(body, fields.checkout_sha or fields.after):
        out["commits"] = [{"id": fields.checkout_sha or fields.after, "message": message}]
    return out


def _skipping_message(body: bytes, sha: str) -> str | None:
    """The message of the pushed commit `sha` if it asks for no build ([skip ci]), else None:
    only then is it kept (workers.core.push_skip), the rest of the commits never made."""
    try:
        commits = _COMMITS.decode(body).commits
    except (msgspec.DecodeError, RecursionError):  # commits of another shape: none read
        return None
    if not isinstance(commits, list):
        return None
    for commit in commits:
        if commit.id == sha and len(commit.message):
            try:
                message = msgspec.json.decode(commit.message)
            except msgspec.DecodeError:
                return None
            return message if message_skips(message) else None
    return None


def _problem(err: msgspec.DecodeError) -> Exception:
    text = str(err)
    if not isinstance(err, msgspec.ValidationError):
        return InvalidPayload(f"body is not valid JSON: {text}")
    refused = refusal(text)
    where = refused.where
    if refused.longest is not None and where:
        unit = "characters" if where in ("after", "checkout_sha") else "bytes"
        return FieldTooLong(f"{_NAMES.get(where, where)} is longer than {refused.longest} {unit}")
    if refused.missing:  # of a missing project, the one field read of it
        field = ".".join(filter(None, (where, refused.missing)))
        field = "project.path_with_namespace" if field == "project" else field
        return InvalidPayload(f"missing field {field!r}")
    if not where:
        return InvalidPayload("body must be a JSON object")
    if refused.expected == "object":
        return InvalidPayload(f"field {where!r} must be an object")
    return InvalidPayload(f"field {where!r} must be a str")

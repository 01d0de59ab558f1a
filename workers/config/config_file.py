"""The YAML file of routes and pod templates: its schema (FileConfig) and its loading.
`load_file_config(path)` reads and validates the file, `parse_file_config(text)` its text;
both raise ConfigError naming the line, the field and the reason."""

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic import field_validator, model_validator

from workers.core.catchup import CatchUpSources
from workers.core.errors import ConfigError
from workers.core.models import PodTemplate, Route
from workers.core.pods import MANAGED_BY_LABEL, MANAGED_BY_VALUE, TEMPLATE_LABEL
from workers.core.routing import PLACEHOLDERS, placeholders
from workers.core.templates import TemplateError, patch_owner, resolve_inheritance
from workers.config import pod_schema

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class FileConfig(BaseModel):
    """The YAML file: routes (first match wins) and named pod templates."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    routes: tuple[Route, ...] = Field(min_length=1)
    templates: dict[str, PodTemplate] = {"default": PodTemplate()}
    # At most this many agents at once, all templates together (None: no cap).
    max_agents: int | None = Field(default=None, gt=0, alias="maxAgents")
    # Projects and groups the catch-up lists besides those the routes name (workers.engine.catchup).
    catch_up: CatchUpSources = Field(default=CatchUpSources(), alias="catchUp")

    @field_validator("templates")
    @classmethod
    def _template_names(cls, templates: dict[str, PodTemplate]) -> dict[str, PodTemplate]:
        for name in templates:
            if not _LABEL_VALUE.fullmatch(name):
                raise ValueError(f"template name {name!r} must be a Kubernetes label value "
                                 "(letters, digits, '-', '_', '.'; at most 63)")
        # the labels its pods carry (core.pods), which its pod anti-affinity may select
        return {name: t.with_pod_labels({MANAGED_BY_LABEL: MANAGED_BY_VALUE,
                                         TEMPLATE_LABEL: name})
                for name, t in templates.items()}

    @model_validator(mode="after")
    def _routes_resolve(self) -> "FileConfig":
        problems = []
        served: dict[str, str] = {}
        for name, template in self.templates.items():
            for label in template.labels:
                if label in served:  # which of the two adopts a build would be arbitrary
                    problems.append(f"templates.{name}.label: {label!r} is already the "
                                    f"label of template {served[label]!r}")
                served.setdefault(label, name)
        for i, route in enumerate(self.routes):
            if route.template not in self.templates:
                problems.append(f"routes[{i}].template: unknown template {route.template!r}")
            for name, value in route.parameters.items():
                try:
                    unknown = placeholders(value) - PLACEHOLDERS
                except ValueError as err:
                    problems.append(f"routes[{i}].parameters.{name}: {err}")
                    continue
                if unknown:
                    # No "; " in a problem: it separates them (parse_file_config).
                    known = ", ".join(f"{{{p}}}" for p in sorted(PLACEHOLDERS))
                    problems.append(f"routes[{i}].parameters.{name}: unknown placeholder "
                                    f"{{{sorted(unknown)[0]}}} (the placeholders: {known})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, tuple[Any, ...]]:
    """The line (1-based) of the deepest YAML node along a pydantic error location: a field's
    own line (its key's), not its value's, which a block value starts on the next line of;
    and the location with each mapping key as the file writes it (`templates.on`, where
    pydantic says `templates.True`)."""
    node, line, offset, written = root, None, 0, list(loc)
    at: yaml.Node | None = root  # the node whose line names `node`: its key, if it has one
    for i, part in enumerate(loc):
        if node is None:
            break
        line = offset + at.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
            # YAML inside a block scalar (a podSpecPatch): its lines follow the indicator's.
            offset += node.start_mark.line + 1
            try:
                node = yaml.compose(node.value)
            except yaml.YAMLError:
                break
        if isinstance(node, yaml.MappingNode):
            at, node = next(((k, v) for k, v in node.value if _key_is(k, part)), (None, None))
            if at is not None:
                written[i] = at.value
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            at = node = node.value[part]
        else:
            node = None
    if node is not None:
        line = offset + at.start_mark.line + 1
    return line, tuple(written)


def _key_is(key: yaml.Node, part: Any) -> bool:
    """Whether a mapping's key is a location's part: a string by its text; a key YAML read
    as another type (`on`, `1.10`, `~`: True, 1.1, None) by that value, of that type."""
    if isinstance(part, str) or not isinstance(key, yaml.ScalarNode):
        return key.value == str(part)
    try:
        value = yaml.SafeLoader("").construct_object(key)
    except yaml.YAMLError:
        return False
    return type(value) is type(part) and value == part


def parse_file_config(text: str, *, source: str = "<config>") -> FileConfig:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([f"{where}: not valid YAML: {getattr(err, 'problem', err)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must be a mapping with 'routes' and 'templates'"])
    twice = [f"{source}:{line}: {_field(loc)}: given twice (first on line {first}): YAML keeps "
             "only the last" for loc, line, first in sorted(_keys_given_twice(root),
                                                        key=lambda f: f[1])]
    if twice:
        raise ConfigError(twice)
    data, written = _resolve_templates(data, source, root)
    try:
        config = FileConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        errors = err.errors()
        # pydantic counts the routes that validated: one bad route of one also reported
        # "routes: Tuple should have at least 1 item after validation, not 0".
        bad_route = any(e["loc"][:1] == ("routes",) and len(e["loc"]) > 1 for e in errors)
        for e in errors:
            if bad_route and e["loc"] == ("routes",) and e["type"] == "too_short":
                continue
            msg = "unknown field" if e["type"] == "extra_forbidden" \
                else e["msg"].removeprefix("Value error, ") + _unquoted(e)
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
            if e["loc"][-1:] == ("[key]",):  # pydantic writes the key True as 1, None as 'None'
                loc = loc[:-1] + (e["input"],)
            if loc:
                problems.append(_problem(source, root, loc, msg))
                continue
            # Cross-field checks report "path: reason; path: reason" at the top level.
            for part in msg.split("; "):
                path, _, reason = part.partition(": ")
                problems.append(_problem(source, root, _loc(path), reason or path))
        raise ConfigError(problems) from None
    found: dict[tuple[Any, ...], str] = {}
    for name, template in config.templates.items():
        for loc, reason in pod_schema.problems(name, template):
            if loc[:1] == ("podSpecPatch",):
                # named where it is written: a parent's patch, or the item of this one's
                owner, inner = patch_owner(written, name, template.pod_spec_patch, loc[1:])
                loc, name = ("podSpecPatch",) + inner, owner
            # one line for a parent's mistake that each child's pod repeats
            found.setdefault(("templates", name) + loc, reason)
    if found:
        raise ConfigError([_problem(source, root, loc, reason) for loc, reason in found.items()])
    return config


def _unquoted(error: Any) -> str:
    """What YAML made of an unquoted value a string field got (`DEBUG: true`, `JAVA: 1.10`,
    `SKIP: on`, `KEY:`), without the value itself: an env value may be a secret."""
    if error["type"] != "string_type":
        return ""
    value = error.get("input")
    kind = "a boolean" if isinstance(value, bool) else "a number" \
        if isinstance(value, (int, float)) else "null (nothing)" if value is None else None
    return f": YAML reads this unquoted value as {kind}; quote it" if kind else ""


_MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<`, YAML 1.1's merge key


def _keys_given_twice(node: yaml.Node | None, loc: tuple[Any, ...] = (), offset: int = 0,
                      seen: set[int] | None = None) -> list[tuple[tuple[Any, ...], int, int]]:
    """(path, line, line of the first) of each key a mapping gives again, in the file and in
    a podSpecPatch written as a block of YAML. YAML requires a mapping's keys to be unique;
    PyYAML keeps the last without a word: a template's second `env:` dropped the first's
    variables, a template pasted again under its name replaced the first. A node an alias
    repeats is looked at once (`seen`): an anchored mapping may hold its own alias, which
    PyYAML loads (a recursive structure), and its keys are where the anchor is."""
    found: list[tuple[tuple[Any, ...], int, int]] = []
    seen = set() if seen is None else seen
    if id(node) in seen:
        return found
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            name, line = key.value, offset + key.start_mark.line + 1
            if not isinstance(key, yaml.ScalarNode):  # a complex key (`? [a, b]`): left be
                continue
            if key.tag == _MERGE_TAG:
                # `<<: *a` then `<<: *b`: PyYAML merges both (SafeConstructor
                # .flatten_mapping), nothing is dropped
                found += _keys_given_twice(value, loc, offset, seen)
                continue
            if name in first:
                found.append((loc + (name,), line, first[name]))
            first.setdefault(name, line)
            found += _keys_given_twice(value, loc + (name,), offset, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _keys_given_twice(item, loc + (i,), offset, seen)
    elif isinstance(node, yaml.ScalarNode) and node.style in ("|", ">") \
            and loc[-1:] == ("podSpecPatch",):
        try:  # its lines follow the indicator's (as _line_of counts them)
            found += _keys_given_twice(yaml.compose(node.value), loc,
                                       offset + node.start_mark.line + 1)
        except yaml.YAMLError:
            pass  # refused as not valid YAML where the patch is parsed
    return found


def _resolve_templates(data: dict[str, Any], source: str, root: yaml.Node | None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """podSpecPatch given as YAML text parsed, and `inherit` merged in (core.templates); and
    the templates as written, their patches parsed."""
    templates = data.get("templates")
    if not isinstance(templates, dict):
        return data, {}
    problems, parsed = [], {}
    for name, raw in templates.items():
        patch = raw.get("podSpecPatch") if isinstance(raw, dict) else None
        if isinstance(patch, str):
            loc = ("templates", name, "podSpecPatch")
            try:
                patch = yaml.safe_load(patch) or {}
            except yaml.YAMLError as err:
                problems.append(_problem(source, root, loc,
                                         f"not valid YAML: {getattr(err, 'problem', err)}"))
                continue
            if not isinstance(patch, dict):
                problems.append(_problem(source, root, loc, "must be a mapping: a PodSpec "
                                                            "fragment such as 'containers: [...]'"))
                continue
            raw = {**raw, "podSpecPatch": patch}
        parsed[name] = raw
    try:
        resolved = resolve_inheritance(parsed)
    except TemplateError as err:
        problems.append(_problem(source, root, ("templates",) + err.path, err.reason))
    if problems:
        raise ConfigError(problems)
    return {**data, "templates": resolved}, parsed


def _loc(path: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", path) if p)


def _field(loc: tuple[Any, ...]) -> str:
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
    return field.replace(".[", "[") or "(top level)"


def _problem(source: str, root: yaml.Node | None, loc: tuple[Any, ...], msg: str) -> str:
    line, loc = _line_of(root, loc)
    field = _field(loc)
    return f"{source}:{line}: {field}: {msg}" if line else f"{source}: {field}: {msg}"


def load_file_config(path: str | Path) -> FileConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from None
    except UnicodeDecodeError as err:  # a file saved in Latin-1: a refusal, not a traceback
        # (one out of gunicorn's on_reload ended the whole web)
        raise ConfigError([f"{path}: not UTF-8 text: byte {err.start} "
                           f"(0x{err.object[err.start]:02x})"]) from None
    return parse_file_config(text, source=str(path))

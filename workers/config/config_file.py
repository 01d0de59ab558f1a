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
        return templates

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


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The line (1-based) of the deepest YAML node along a pydantic error location: a field's
    own line (its key's), not its value's, which a block value starts on the next line of."""
    node, line, offset = root, None, 0
    at: yaml.Node | None = root  # the node whose line names `node`: its key, if it has one
    for part in loc:
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
            at, node = next(((k, v) for k, v in node.value if k.value == str(part)),
                            (None, None))
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            at = node = node.value[part]
        else:
            node = None
    if node is not None:
        line = offset + at.start_mark.line + 1
    return line


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
                else e["msg"].removeprefix("Value error, ")
            booleans = _booleans(root, e)
            if booleans:
                problems += [_problem(source, root, where, f"YAML reads an unquoted {word} as "
                                                           f'a boolean: quote it ("{word}")')
                             for where, word in booleans]
                continue
            loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))
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


_BOOL_TAG = "tag:yaml.org,2002:bool"


def _booleans(root: yaml.Node | None, error: Any) -> list[tuple[tuple[Any, ...], str]]:
    """Where a string was wanted and YAML 1.1 (PyYAML's) read an unquoted on/off/yes/no/true/
    false as a boolean, with the word as written: pydantic names a mapping key by its value
    (True as `[1]`: "templates[1]: Input should be a valid string"), which names neither the
    template nor the fix. Each key that is such a word (`on` and `yes` are one key, True),
    or the value; [] for any other error. Only these words are shown, never a value."""
    value, loc = error.get("input"), error["loc"]
    if error["type"] != "string_type" or not isinstance(value, bool):
        return []
    if loc[-1:] == ("[key]",):
        parent = loc[:-2]
        node = _node_at(root, parent)
        keys = node.value if isinstance(node, yaml.MappingNode) else []
        return [(parent + (k.value,), k.value) for k, _ in keys
                if k.tag == _BOOL_TAG and yaml.safe_load(k.value) is value]
    node = _node_at(root, loc)
    return [(loc, node.value)] if isinstance(node, yaml.ScalarNode) \
        and node.tag == _BOOL_TAG else []


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The YAML node along a pydantic error location (mappings and sequences; None past
    anything else, a podSpecPatch's block scalar included)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node


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


def _problem(source: str, root: yaml.Node | None, loc: tuple[Any, ...], msg: str) -> str:
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
    field = field.replace(".[", "[") or "(top level)"
    line = _line_of(root, loc)
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

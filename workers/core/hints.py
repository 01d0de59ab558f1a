"""Size hints: a build may ask for CPU and memory, through a Jenkins build parameter of its
route or a GitLab push option (`git push -o ci.variable="CI_AUTOSCALER_CPU=4"`). A hint is
clamped into the template's min..max and becomes the build's default size; one that cannot
be read is ignored. Never a reason to fail a build. Pure."""

from collections.abc import Mapping
from typing import Any

from workers.core.models import PodTemplate
from workers.core.quantity import (
    cpu_millis, format_cpu, format_memory, memory_bytes, parse_quantity)

HINT_CPU = "CI_AUTOSCALER_CPU"
HINT_MEMORY = "CI_AUTOSCALER_MEMORY"
HINTS = (HINT_CPU, HINT_MEMORY)
# A hint longer than this, or larger than any node (a million cores, an exbibyte), is no size:
# dropped before it is turned into an integer ("1e999999" would be a million digits).
MAX_HINT_CHARS = 32
_HINT_MAX = {HINT_CPU: 10**6, HINT_MEMORY: 2**60}
_HINT_FORMAT = {HINT_CPU: (cpu_millis, format_cpu), HINT_MEMORY: (memory_bytes, format_memory)}


def push_option_variables(push_options: Any) -> dict[str, str]:
    """The `ci.variable` push options of a GitLab push payload as NAME -> value.

    GitLab keeps a multi-value option as a hash of value -> 1
    (`{"ci": {"variable": {"A=1": 1, "B=2": 1}}}`); a single string or a list is read too."""
    ci = push_options.get("ci") if isinstance(push_options, Mapping) else None
    raw = ci.get("variable") if isinstance(ci, Mapping) else None
    if isinstance(raw, str):
        items = [raw]
    elif isinstance(raw, Mapping):
        items = list(raw)
    elif isinstance(raw, list):
        items = raw
    else:
        return {}
    out = {}
    for item in items:
        if isinstance(item, str) and "=" in item:
            name, _, value = item.partition("=")
            out[name.strip()] = value.strip()
    return out


def hint_parameters(variables: Mapping[str, str]) -> dict[str, str]:
    """Only the size hints, and each as the quantity it parses to, written afresh ("4", "1500m",
    "8Gi"): what a pusher writes is never passed on to Jenkins as it is (issue 17:
    `CI_AUTOSCALER_CPU=$(id) 1000` reached the build's parameters). A hint that is not a
    quantity is dropped; other variables a pusher sets are not passed on."""
    out = {}
    for name in HINTS:
        text = variables.get(name)
        if text is None or len(text) > MAX_HINT_CHARS:
            continue
        try:
            if not 0 < parse_quantity(text) <= _HINT_MAX[name]:
                continue
        except ValueError:
            continue
        parse, show = _HINT_FORMAT[name]
        out[name] = show(parse(text))
    return out


def _one(name: str, text: str, low: int, default: int, high: int,
         parse, show) -> tuple[int, str | None]:
    try:
        value = parse(text)
        if value <= 0:
            raise ValueError("not more than 0")
    except (ValueError, TypeError):
        return default, f"{name}={text!r} is not a Kubernetes quantity; ignored"
    clamped = max(low, min(high, value))
    if clamped != value:
        bound = "max" if value > high else "min"
        return clamped, (f"{name}={text} is outside the template's {show(low)}..{show(high)}; "
                         f"clamped to its {bound} {show(clamped)}")
    return clamped, None


def names_memory(parameters: Mapping[str, str]) -> bool:
    """Whether the build's hints name its memory (apply_hint sets it then). A hint of CPU
    alone says nothing of memory: that stays its job's (workers.engine.scheduling.sized_for)."""
    text = parameters.get(HINT_MEMORY)
    return text is not None and bool(str(text).strip())


def apply_hint(template: PodTemplate, parameters: Mapping[str, str]
               ) -> tuple[PodTemplate, list[str]]:
    """The template with the hinted sizes as its defaults, and a note for every hint that
    was clamped or ignored."""
    notes, update = [], {}
    for name, field, parse, show in ((HINT_CPU, "cpu", cpu_millis, format_cpu),
                                     (HINT_MEMORY, "memory", memory_bytes, format_memory)):
        text = parameters.get(name)
        if text is None or not str(text).strip():
            continue
        rng = getattr(template, field)
        value, note = _one(name, str(text).strip(), rng.min, rng.default, rng.max, parse, show)
        if note:
            notes.append(note)
        update[field] = rng.model_copy(update={"default": value})
    return (template.model_copy(update=update) if update else template), notes

"""Size hints: a build may ask for CPU and memory, through a Jenkins build parameter of its
route or a GitLab push option (`git push -o ci.variable="CI_AUTOSCALER_CPU=4"`). A hint is
clamped into the template's min..max and becomes the build's default size; one that cannot
be read is ignored. Never a reason to fail a build. Pure."""

from collections.abc import Mapping
from typing import Any

from workers.core.models import PodTemplate
from workers.core.quantity import cpu_millis, format_cpu, format_memory, memory_bytes

HINT_CPU = "CI_AUTOSCALER_CPU"
HINT_MEMORY = "CI_AUTOSCALER_MEMORY"
HINTS = (HINT_CPU, HINT_MEMORY)


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
    """Only the size hints: other variables a pusher sets are not passed on to Jenkins."""
    return {name: variables[name] for name in HINTS if name in variables}


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

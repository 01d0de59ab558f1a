"""CI_AUTOSCALER_REFERENCE_NODE_CPU/_MEMORY, the node shape `nodes_needed` counts in (README):
a value that is no quantity, or none at all, refused when the settings load, naming it; and no
setting of seconds or a ratio infinite or NaN."""

import pytest

from workers.config.settings import Settings, load_settings
from workers.core.errors import ConfigError


def test_a_reference_node_shape_is_taken(monkeypatch):
    monkeypatch.setenv("CI_AUTOSCALER_REFERENCE_NODE_CPU", "4")
    monkeypatch.setenv("CI_AUTOSCALER_REFERENCE_NODE_MEMORY", "16Gi")
    reference = load_settings().reference_node
    assert (reference.cpu_millis, reference.memory_bytes) == (4000, 16 * 2**30)


@pytest.mark.parametrize("cpu, memory, says", [
    ("0", "16Gi", "CI_AUTOSCALER_REFERENCE_NODE_CPU: must be more than 0"),
    ("4", "0Gi", "CI_AUTOSCALER_REFERENCE_NODE_MEMORY: must be more than 0"),
    ("4 cores", "16Gi", "CI_AUTOSCALER_REFERENCE_NODE_CPU: not a quantity"),
    ("4", "16GB", "CI_AUTOSCALER_REFERENCE_NODE_MEMORY: not a quantity"),
])
def test_a_reference_node_of_no_size_is_refused_naming_the_variable(monkeypatch, cpu, memory,
                                                                      says):
    monkeypatch.setenv("CI_AUTOSCALER_REFERENCE_NODE_CPU", cpu)
    monkeypatch.setenv("CI_AUTOSCALER_REFERENCE_NODE_MEMORY", memory)
    with pytest.raises(ConfigError) as err:
        load_settings()
    [problem] = err.value.problems
    assert problem.startswith(says), problem


FLOAT_SETTINGS = [name for name, field in Settings.model_fields.items()
                  if field.annotation is float]


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_no_setting_in_seconds_or_ratios_is_infinite_or_nan(monkeypatch, name, value):
    """CI_AUTOSCALER_REDIS_TIMEOUT_SECONDS=inf loaded, and each gunicorn worker died making
    its Redis client (OverflowError: cannot convert float infinity to integer), exit 3; the
    other seconds and ratios alike. Refused at load, naming the variable."""
    variable = Settings.model_fields[name].validation_alias.choices[0]
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert any(p.startswith(f"{variable}: ") for p in err.value.problems), err.value.problems

"""The history sizing's settings (README, "Sizing each job from its history") are refused by
name when no build could be sized with them."""

import pytest

from workers.config.settings import load_settings
from workers.core.errors import ConfigError


@pytest.mark.parametrize("margin", ["inf", "1e300", "11"])
def test_a_memory_margin_no_build_could_be_sized_with_is_refused_by_name(monkeypatch, margin):
    """inf (or 1e300, whose product with a peak is inf) was taken, and every build of a job
    with history failed its provision: OverflowError rounding the recommendation."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CI_AUTOSCALER_HISTORY_MEMORY_MARGIN", margin)
    with pytest.raises(ConfigError, match="CI_AUTOSCALER_HISTORY_MEMORY_MARGIN"):
        load_settings()


def test_a_memory_margin_of_two_is_taken(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("CI_AUTOSCALER_HISTORY_MEMORY_MARGIN", "2")
    assert load_settings().history_memory_margin == 2.0

"""What moved a build's size from its default (workers.core.sizing.moved_by): shown on the
status page and logged beside where the default came from (issue 21)."""

import pytest

from workers.core.cluster import Resources
from workers.core.sizing import HEADROOM, PRESSURE, moved_by

GI = 2**30


@pytest.mark.parametrize(("size", "moved"), [
    (Resources(1000, GI), None),
    (Resources(1000, GI // 2), PRESSURE),
    (Resources(500, GI), PRESSURE),
    (Resources(2000, GI // 2), PRESSURE),  # less memory outweighs more CPU: it may OOM
    (Resources(2000, GI), HEADROOM),
    (Resources(1000, 2 * GI), HEADROOM),
])
def test_moved_by_names_pressure_below_the_default_and_headroom_above(size, moved):
    assert moved_by(Resources(1000, GI), size) == moved

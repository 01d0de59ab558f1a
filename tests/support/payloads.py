"""The real webhook captures of ../shared/fixtures/webhooks (see its SOURCES.md)."""

import json
import os
from pathlib import Path

_HERE = Path(__file__).resolve()
FIXTURES = Path(os.environ.get(
    "CI_AUTOSCALER_FIXTURES", _HERE.parents[3] / "shared" / "fixtures" / "webhooks"))
EXAMPLE_CONFIG = _HERE.parents[2] / "examples" / "ci-autoscaler.yaml"


def fixture_bytes(name: str) -> bytes:
    path = FIXTURES / name
    if not path.exists():
        raise FileNotFoundError(f"webhook fixture {path} is missing; the suite reads the real "
                                "captures in ../shared/fixtures/webhooks (set "
                                "CI_AUTOSCALER_FIXTURES to point elsewhere)")
    return path.read_bytes()


def fixture(name: str) -> dict:
    return json.loads(fixture_bytes(name))
